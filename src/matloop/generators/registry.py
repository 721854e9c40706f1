"""Generator names used in campaign configs, mapped to their classes (imported lazily).

Importing this module imports no generator: torch models and pyxtal load only when
:func:`build_generator` asks for a generator that needs them.

Examples
--------
>>> from matloop.generators.base import ChemicalSpace
>>> "prototype_substitution" in available_generators()
True
>>> gen = build_generator("prototype_substitution", ChemicalSpace(["Na", "Cl"]), seed=1)
>>> gen.name
'prototype_substitution'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from matloop.generators.training import TORCH_GENERATORS

if TYPE_CHECKING:
    from matloop.generators.base import ChemicalSpace, Generator

__all__ = [
    "GENERATOR_PATHS",
    "available_generators",
    "build_generator",
    "checked_settings",
    "generator_class",
    "load_generator",
]

#: Config name -> ``"module:Class"``. Each class's ``name`` equals its key.
GENERATOR_PATHS: dict[str, str] = {
    "prototype_substitution": "matloop.generators.prototypes:PrototypeSubstitution",
    "random_symmetric": "matloop.generators.random_symmetric:RandomSymmetric",
    "table_rows": "matloop.generators.table:TableRows",
    "ion_substitution": "matloop.generators.ion_substitution:IonSubstitution",
}
#: Learned torch models: used in a campaign through a trained checkpoint (``matloop train``).
GENERATOR_PATHS.update(TORCH_GENERATORS)


def available_generators() -> list[str]:
    """Names accepted by :func:`build_generator`, sorted."""
    return sorted(GENERATOR_PATHS)


def generator_class(name: str) -> type[Generator]:
    """Import and return the class registered under ``name``.

    Raises
    ------
    ValueError
        When ``name`` is not registered; the message lists the known names.
    """
    try:
        path = GENERATOR_PATHS[name]
    except KeyError:
        known = ", ".join(available_generators())
        raise ValueError(f"unknown generator {name!r}; known generators: {known}") from None
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_generator(
    name: str, chemical_space: ChemicalSpace, seed: int = 0, **settings: Any
) -> Generator:
    """Build the generator registered under ``name``.

    Parameters
    ----------
    name
        A key of :data:`GENERATOR_PATHS`.
    chemical_space
        Elements and cell-size bounds of the campaign.
    seed
        Seed of the generator's default random number generator.
    **settings
        Keyword settings of that generator's constructor.

    Raises
    ------
    ValueError
        For an unknown name (listing the known ones).
    TypeError
        For a setting the generator does not take.
    """
    if name in TORCH_GENERATORS:
        raise ValueError(
            f"generator {name!r} is a learned model: give it a trained checkpoint "
            "(`matloop train ...`, then `checkpoint: PATH` in the campaign's generators)"
        )
    cls = generator_class(name)
    return cls(chemical_space, seed=seed, **checked_settings(cls, settings))


def checked_settings(cls: type[Generator], settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` validated by the generator's ``Settings`` model: the ones given, with
    their types checked (the constructor's defaults fill the rest).

    Raises
    ------
    SettingsError
        Naming every unknown or invalid setting.
    """
    from pydantic import ValidationError

    from matloop.generators.base import SettingsError

    if cls.Settings is None:
        return dict(settings)
    try:
        model = cls.Settings.model_validate(settings)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: "
            + ("unknown setting" if e["type"] == "extra_forbidden" else e["msg"])
            for e in err.errors()
        )
        raise SettingsError(f"generator {cls.name!r}: {problems}") from None
    return model.model_dump(exclude_unset=True)


#: Settings a campaign may change on a trained model: how it samples, not what it learned.
SAMPLING_SETTINGS = ("temperature", "prior", "screen_proposals")


def load_generator(
    name: str,
    checkpoint: str,
    chemical_space: ChemicalSpace,
    settings: dict[str, Any] | None = None,
    trust: bool = False,
) -> Generator:
    """Load a trained generator from a checkpoint file written by its ``save``.

    The file must match the ``<checkpoint>.sha256`` written beside it, unless ``trust``.

    ``settings`` (a campaign's ``generators[].settings``) may override how a torch model
    samples (:data:`SAMPLING_SETTINGS`, e.g. ``{"temperature": 1.0}``); they are kept in the
    model's config, so its fine-tuned versions sample the same way.

    Raises
    ------
    FileNotFoundError
        When the checkpoint file does not exist.
    ValueError
        For a setting a trained model cannot take (the message lists the ones it can).
    """
    from pathlib import Path

    from matloop.data import expand_path

    checkpoint = str(expand_path(checkpoint))  # ${VAR}: a campaign file names no machine
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint for generator {name!r} not found: {checkpoint}")
    generator = generator_class(name).load(checkpoint, trust=trust)
    if hasattr(generator, "chemical_space") and generator.chemical_space is None:
        generator.chemical_space = chemical_space
    if settings:
        config = getattr(generator, "config", None)
        unknown = sorted(set(settings) - set(SAMPLING_SETTINGS))
        if unknown or not isinstance(config, dict):
            raise ValueError(
                f"generator {name!r} from a checkpoint takes only sampling settings "
                f"({', '.join(SAMPLING_SETTINGS)}); got {', '.join(unknown or sorted(settings))}"
            )
        config.update(settings)
    return generator
