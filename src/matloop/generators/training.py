"""Front door of the torch generators: train from a CSV, sample structures, load checkpoints.

Examples
--------
>>> gen = train_model("crystal_cvae", "perov_5/val.csv.gz", property_columns=["dir_gap"],
...                   epochs=150, seed=0)                              # doctest: +SKIP
>>> structures = sample_structures(gen, 1000, {"dir_gap": (1.5, 2.5)})  # doctest: +SKIP
>>> gen.save("cvae.pt"); gen = load_checkpoint("cvae.pt")             # doctest: +SKIP

Importing this module is cheap: torch loads only when a model is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    import numpy as np
    from pymatgen.core import Structure

    from matloop.generators.base import Generator

#: Registry name -> "module:Class" of every torch generator.
TORCH_GENERATORS: dict[str, str] = {
    "crystal_vae": "matloop.generators.torch_crystal:CrystalVAEGenerator",
    "crystal_cvae": "matloop.generators.torch_crystal:CrystalCVAEGenerator",
    "crystal_latent_opt": "matloop.generators.torch_crystal:LatentOptCrystalGenerator",
    "crystal_cgan": "matloop.generators.torch_cgan:CrystalCGANGenerator",
    "composition_vae": "matloop.generators.torch_composition:CompositionVAEGenerator",
    "composition_cvae": "matloop.generators.torch_composition:CompositionCVAEGenerator",
    "composition_wgan": "matloop.generators.torch_composition:CompositionWGANGenerator",
    "crystal_flow": "matloop.generators.torch_flow:CrystalFlowGenerator",
}

#: Models that use ``property_columns``.
CONDITIONAL = {
    "crystal_cvae",
    "crystal_latent_opt",
    "crystal_cgan",
    "composition_cvae",
    "crystal_flow",
}


def generator_class(kind: str) -> type[Generator]:
    """The class registered under ``kind``; ``ValueError`` names the known kinds."""
    try:
        target = TORCH_GENERATORS[kind]
    except KeyError:
        raise ValueError(
            f"unknown torch generator {kind!r}; known: {sorted(TORCH_GENERATORS)}"
        ) from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def train_model(
    kind: str,
    csv_path: str | Path,
    *,
    property_columns: Sequence[str] = (),
    epochs: int | None = None,
    seed: int = 0,
    device: str | None = None,
    elements: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> Generator:
    """Build the ``kind`` generator and fit it on the CIFs (and property columns) of a CSV.

    ``epochs=None`` keeps the model's default; ``options`` go to the model's constructor.
    Unconditional kinds ignore ``property_columns``.
    """
    from matloop.generators.torch_common import read_structures_csv

    cls = generator_class(kind)
    columns = list(property_columns) if kind in CONDITIONAL else []
    structures, props = read_structures_csv(csv_path, columns, limit=limit)
    kwargs: dict[str, Any] = dict(options, property_columns=columns, seed=seed, device=device)
    if epochs is not None:
        kwargs["epochs"] = epochs
    if elements is not None:
        kwargs["elements"] = list(elements)
    gen = cls(**kwargs)
    gen.fit(structures, props if columns else None)
    return gen


def sample_structures(
    generator: Generator,
    n: int,
    conditions: Mapping[str, Any] | None = None,
    rng: np.random.Generator | int | None = None,
) -> list[Structure]:
    """``generator.sample`` with an integer seed accepted for ``rng``."""
    import numpy as np

    if rng is None or isinstance(rng, int):
        rng = np.random.default_rng(rng)
    return generator.sample(n, conditions, rng=rng)


def load_checkpoint(
    path: str | Path, device: str | None = None, trust: bool = False
) -> Generator:
    """Any torch generator checkpoint (the kind is read from the file, ``weights_only``);
    refused without a matching ``<path>.sha256`` unless ``trust``."""
    from matloop.generators.torch_common import read_checkpoint

    kind, *_ = read_checkpoint(path, trust=trust)
    return generator_class(kind).load(path, device=device, trust=trust)
