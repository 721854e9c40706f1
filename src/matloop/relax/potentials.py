"""Potential names and the energy scale they sit on, without loading any potential.

The loop and the results read these (a campaign's potential label, whether its energies
pass through MP2020) without importing atomate2 or a model.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "KNOWN_POTENTIALS",
    "NEEDS_MP2020_CORRECTION",
    "canonical_potential",
    "needs_mp2020_correction",
    "potential_version",
    "relaxer_potential",
    "table_name",
]

#: Potentials :func:`make_relax_maker` knows, by atomate2 ``MLFF`` name. Both ship their
#: weights inside their wheels, so they load without network access.
KNOWN_POTENTIALS: tuple[str, ...] = ("CHGNet", "SevenNet")


def canonical_potential(potential: str) -> str:
    """Return the canonical spelling of a known potential or raise a clear error."""
    by_lower = {p.lower(): p for p in KNOWN_POTENTIALS}
    key = str(potential).split("MLFF.")[-1].lower()
    if key not in by_lower:
        raise ValueError(
            f"Unknown potential {potential!r}; known potentials: {', '.join(KNOWN_POTENTIALS)}."
        )
    return by_lower[key]


@lru_cache(maxsize=8)
def chgnet_default_model() -> str:
    """Version of the model ``CHGNetCalculator()`` loads when given none (read from chgnet)."""
    import inspect

    from chgnet.model.model import CHGNet

    return str(inspect.signature(CHGNet.load).parameters["model_name"].default)


def potential_version(potential: str, calculator_kwargs: dict[str, Any] | None = None) -> str:
    """Name and model version of a potential, for provenance records.

    Parameters
    ----------
    potential : str
        A name from :data:`KNOWN_POTENTIALS`.
    calculator_kwargs : dict, optional
        The maker's calculator keyword arguments, when they choose a non-default model.

    Returns
    -------
    str
        For example ``"CHGNet 0.3.0"`` or ``"SevenNet 7net-0"``.

    Examples
    --------
    >>> potential_version("SevenNet")
    'SevenNet 7net-0'
    """
    name = canonical_potential(potential)
    kwargs = calculator_kwargs or {}
    if name == "CHGNet":
        model = kwargs.get("model")
        version = model if isinstance(model, str) else getattr(model, "version", None)
        return f"CHGNet {version or chgnet_default_model()}"
    model = kwargs.get("model", "7net-0")
    return f"SevenNet {model if isinstance(model, str) else type(model).__name__}"


def table_name(path: str | Path) -> str:
    """A replay table's short name: its folder and file stem, e.g. ``perov_5/val``."""
    path = Path(path)
    return f"{path.parent.name}/{path.name.split('.')[0]}" if path.parent.name else path.stem


#: Whether a potential's energies need MaterialsProject2020Compatibility to sit on MP's
#: corrected scale. Measured here against MP (rutile TiO2, rock-salt CaO, with each
#: potential's own elemental references): CHGNet 0.3.0 already gives MP2020-corrected
#: formation energies (TiO2 -3.51, CaO -3.30 eV/atom, as MP's corrected values), since it
#: learned MPtrj's corrected energies; SevenNet 7net-0 gives raw GGA ones (TiO2 -3.05,
#: CaO -2.99), which the correction brings to the same scale. Correcting CHGNet again
#: would count the oxide correction twice.
NEEDS_MP2020_CORRECTION: dict[str, bool] = {"CHGNet": False, "SevenNet": True}


def needs_mp2020_correction(potential: str) -> bool:
    """True when ``potential``'s energies must pass through MP2020 before a hull (never for
    a replay table: its energies are on the table's own scale)."""
    if str(potential).startswith("replay"):
        return False
    return NEEDS_MP2020_CORRECTION[canonical_potential(potential)]


def relaxer_potential(relaxer: Mapping[str, Any]) -> str:
    """The potential label of a campaign's ``relaxer`` settings (a config dict): e.g.
    ``'CHGNet 0.3.0'``, or ``'replay:perov_5/val'`` for a replay table.

    Examples
    --------
    >>> relaxer_potential({"potential": "replay", "replay": {"path": "data/perov_5/val.csv.gz"}})
    'replay:perov_5/val'
    """
    if relaxer.get("potential") == "replay":
        return f"replay:{table_name(relaxer['replay']['path'])}"
    return potential_version(relaxer["potential"])
