"""A DFT hull for verification: which references to compute, the hull, and the verdict.

A DFT energy (CP2K with GTH pseudopotentials, VASP with PAW) is on its own scale, so a
verified candidate is judged only against DFT energies of the same code and settings: the
elemental references and known competing phases of its chemical system, relaxed by the same
DFT maker, plus the other verified candidates. Pure functions; the verify step runs the DFT
and keeps the documents.

Verdicts
--------
``confirmed``         DFT-relaxed, converged, within the stability threshold on the DFT hull
``refuted``           DFT-relaxed, converged, above the threshold on the DFT hull
``checked-stable``    single point (``kind: static``) within the threshold; not relaxed
``checked-unstable``  single point above the threshold
``failed``            the DFT calculation did not finish or converge
``None``              no DFT hull (an elemental reference is missing)

Examples
--------
>>> hull = dft_hull([("element:Na", "Na1", -1.0), ("element:Cl", "Cl2", -2.0)],
...                 [("nacl", "Na1Cl1", -2.0), ("na2cl", "Na2Cl1", -1.0)])
>>> round(hull.e_above_hull["nacl"], 3), round(hull.e_above_hull["na2cl"], 3)
(0.0, 0.667)
>>> verdict("relax", ok=True, e_above_hull=0.0, threshold=0.1)
'confirmed'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DFT_RECIPE",
    "DftHull",
    "ReferenceChoice",
    "choose_references",
    "dft_hull",
    "dft_label",
    "dft_label_of",
    "verdict",
]


def dft_label(code: str, kind: str, settings: Mapping[str, Any]) -> str:
    """The ``potential`` under which DFT references are kept: the code and a hash of every
    setting that changes the energy, so only entries of identical settings share a hull.

    Examples
    --------
    >>> dft_label("cp2k", "relax", {"fast": True})
    'CP2K relax 54263023d038'
    """
    payload = json.dumps({"code": code, "kind": kind, **settings}, sort_keys=True, default=str)
    return f"{code.upper()} {kind} {hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def dft_label_of(dft: Mapping[str, Any]) -> str:
    """:func:`dft_label` of a campaign's ``dft:`` settings (a ``DftConfig`` dumped to a dict).

    Examples
    --------
    >>> dft_label_of({"code": "cp2k", "kind": "relax", "fast": True})
    'CP2K relax f8f5bc7e6cb4'
    """
    return dft_label(dft.get("code", "cp2k"), dft.get("kind", "relax"), {
        "fast": bool(dft.get("fast", False)), "kpoints": dft.get("kpoints"),
        "settings": dict(dft.get("settings") or {}),
        # matloop's own input changes that move energies (2: CP2K cell optimisations keep the
        # space group and the grids, molecular crystals their cell): older references differ
        "recipe": DFT_RECIPE,
    })


#: Version of matloop's DFT inputs beyond the campaign's settings, part of every DFT label.
DFT_RECIPE = 2


@dataclass(frozen=True)
class ReferenceChoice:
    """A hull reference the ML hull knows: its id, chemical system, place on the ML hull and
    size (the DFT cost)."""

    reference_id: str
    chemsys: str
    ml_e_above_hull: float
    nsites: int
    elemental: bool = False


def _elements(chemsys: str) -> set[str]:
    return set(chemsys.split("-"))


def choose_references(
    chemsys: str, known: Iterable[ReferenceChoice], max_references: int
) -> list[str]:
    """Reference ids to compute with DFT for a candidate of ``chemsys``.

    Every elemental reference of the system (a hull needs them), then up to
    ``max_references`` known compounds of the system or its subsystems, the most relevant
    and cheapest first: lowest ML ``e_above_hull``, then fewest atoms.

    Examples
    --------
    >>> refs = [ReferenceChoice("element:Na", "Na", 0.0, 2, True),
    ...         ReferenceChoice("element:Cl", "Cl", 0.0, 4, True),
    ...         ReferenceChoice("seed:big", "Cl-Na", 0.0, 16),
    ...         ReferenceChoice("seed:rs", "Cl-Na", 0.0, 2),
    ...         ReferenceChoice("seed:far", "Cl-Na", 0.4, 2),
    ...         ReferenceChoice("seed:K", "K-Cl", 0.0, 2)]
    >>> choose_references("Na-Cl", refs, 2)
    ['element:Cl', 'element:Na', 'seed:rs', 'seed:big']
    """
    allowed = _elements(chemsys)
    inside = [r for r in known if _elements(r.chemsys) <= allowed]
    elements = sorted((r for r in inside if r.elemental), key=lambda r: r.reference_id)
    compounds = sorted(
        (r for r in inside if not r.elemental),
        key=lambda r: (r.ml_e_above_hull, r.nsites, r.reference_id),
    )
    return [r.reference_id for r in elements] + [
        r.reference_id for r in compounds[: max(max_references, 0)]
    ]


@dataclass
class DftHull:
    """The DFT hull of some entries: ``e_above_hull`` per entry id (eV/atom), the missing
    elements (entries of systems the hull cannot place) and the hull's version."""

    e_above_hull: dict[str, float] = field(default_factory=dict)
    formation_energy: dict[str, float] = field(default_factory=dict)
    missing_elements: dict[str, list[str]] = field(default_factory=dict)
    version: str | None = None


def dft_hull(
    references: Sequence[tuple[str, str, float]],
    candidates: Sequence[tuple[str, str, float]],
    scheme: str | None = None,
) -> DftHull:
    """Place references and candidates, given as ``(id, cell formula, energy per atom)``,
    on the hull they make together (raw DFT energies: no correction scheme).

    A candidate whose elements lack a reference gets no ``e_above_hull`` and is listed in
    ``missing_elements`` instead; the rest of the hull is still built.
    """
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    from matloop.evaluators.evidence import reference_set_version

    entries = {}
    for entry_id, formula, energy_per_atom in [*references, *candidates]:
        composition = Composition(formula)
        entries[entry_id] = PDEntry(composition, energy_per_atom * composition.num_atoms,
                                    name=entry_id)
    elemental = {
        entry.composition.elements[0].symbol
        for entry in entries.values() if len(entry.composition.elements) == 1
    }
    result = DftHull()
    placeable = {}
    for entry_id, entry in entries.items():
        missing = sorted({el.symbol for el in entry.composition.elements} - elemental)
        if missing:
            result.missing_elements[entry_id] = missing
        else:
            placeable[entry_id] = entry
    if placeable:
        pd = PhaseDiagram(list(placeable.values()))
        for entry_id, entry in placeable.items():
            result.e_above_hull[entry_id] = float(pd.get_e_above_hull(entry))
            result.formation_energy[entry_id] = float(pd.get_form_energy_per_atom(entry))
    result.version = reference_set_version(
        [(i, f, e) for i, f, e in [*references, *candidates] if i in placeable], scheme
    )
    return result


def verdict(
    kind: str,
    *,
    ok: bool,
    e_above_hull: float | None,
    threshold: float,
) -> str | None:
    """What a DFT verification says of a candidate (see the module docstring)."""
    if not ok:
        return "failed"
    if e_above_hull is None:
        return None
    stable = e_above_hull <= threshold
    if kind == "relax":
        return "confirmed" if stable else "refuted"
    return "checked-stable" if stable else "checked-unstable"
