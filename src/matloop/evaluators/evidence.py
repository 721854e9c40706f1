"""How sure a result is: evidence levels, and the version of the hull it was judged against.

Every evaluated candidate records *how its energy was obtained* (its evidence level), the
convergence its relaxation reached, and *which hull* it was judged against — the hull's
reference-set version, a short hash of every entry the hull was built from. The export writes
those entries to ``references.csv``, so anyone can recompute the hash and every
``e_above_hull`` with pymatgen alone.

Evidence levels, weakest first:

``table-lookup``      answered from a labelled table by a replay campaign (an agent benchmark)
``mlip-relaxed``      relaxed with a machine-learned potential (CHGNet, SevenNet): a *lead*
``dft-single-point``  one DFT energy on the ML-relaxed structure: DFT-checked, not relaxed
``dft-relaxed``       relaxed with DFT (CP2K, VASP): the only level called *confirmed*

Examples
--------
>>> evidence_for_potential("CHGNet 0.3.0")
'mlip-relaxed'
>>> is_confirmed("mlip-relaxed")
False
>>> reference_set_version([("element:Na", "Na1", -1.3), ("element:Cl", "Cl2", -1.8)], "MP2020")
'f1e92c2d340c'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

__all__ = [
    "CONFIRMED",
    "EvidenceLevel",
    "count_by_evidence",
    "describe_evidence",
    "evidence_for_potential",
    "is_confirmed",
    "reference_set_version",
    "strongest_evidence",
]


class EvidenceLevel(StrEnum):
    """How an energy was obtained, weakest first."""

    table_lookup = "table-lookup"
    mlip_relaxed = "mlip-relaxed"
    dft_single_point = "dft-single-point"
    dft_relaxed = "dft-relaxed"


#: Levels that make a discovery *confirmed*; anything from an ML potential alone is a lead.
CONFIRMED: frozenset[str] = frozenset({EvidenceLevel.dft_relaxed.value})

#: What each level means, for tables and reports.
MEANING: dict[str, str] = {
    EvidenceLevel.table_lookup.value: "replayed from a labelled table (benchmark only)",
    EvidenceLevel.mlip_relaxed.value: "lead (ML potential only)",
    EvidenceLevel.dft_single_point.value: "DFT-checked (single point, not relaxed)",
    EvidenceLevel.dft_relaxed.value: "confirmed (DFT-relaxed)",
}

_DFT_CODES = ("cp2k", "vasp", "qe", "quantum espresso", "gpaw", "abinit")


def evidence_for_potential(potential: str, *, single_point: bool = False) -> str:
    """Evidence level of an energy from ``potential`` (a potential or a DFT code name).

    Examples
    --------
    >>> evidence_for_potential("CP2K PBE")
    'dft-relaxed'
    >>> evidence_for_potential("VASP r2SCAN", single_point=True)
    'dft-single-point'
    """
    name = (potential or "").lower()
    if name.startswith("replay:"):
        return EvidenceLevel.table_lookup.value
    if any(name.startswith(code) for code in _DFT_CODES):
        return (EvidenceLevel.dft_single_point if single_point else EvidenceLevel.dft_relaxed).value
    return EvidenceLevel.mlip_relaxed.value


def is_confirmed(evidence: str | None) -> bool:
    """True only for DFT-relaxed results; nothing ML-only is ever confirmed."""
    return evidence in CONFIRMED


def count_by_evidence(levels: Iterable[str | None]) -> dict[str, int]:
    """Counts per evidence level, every physical level present (zero when absent);
    ``table-lookup`` only when a replay campaign produced some.

    Examples
    --------
    >>> count_by_evidence(["mlip-relaxed", "mlip-relaxed"])
    {'mlip-relaxed': 2, 'dft-single-point': 0, 'dft-relaxed': 0}
    """
    counts = {
        level.value: 0 for level in EvidenceLevel if level is not EvidenceLevel.table_lookup
    }
    for level in levels:
        key = level or EvidenceLevel.mlip_relaxed.value
        counts[key] = counts.get(key, 0) + 1
    return counts


def describe_evidence(
    evidence: str | None,
    potential: str | None = None,
    settings: Mapping[str, Any] | None = None,
    *,
    converged: bool | None = None,
    max_force: float | None = None,
    n_steps: int | None = None,
) -> str:
    """One line saying how an energy was obtained and how well it converged.

    Examples
    --------
    >>> describe_evidence("mlip-relaxed", "CHGNet 0.3.0", {"fmax": 0.05, "steps": 300},
    ...                   converged=True, max_force=0.031, n_steps=42)
    'mlip-relaxed: CHGNet 0.3.0 (fmax 0.05, steps 300); converged, max force 0.031 eV/Å in 42 steps'
    """
    text = evidence or EvidenceLevel.mlip_relaxed.value
    if potential:
        text += f": {potential}"
        if settings:
            text += " (" + ", ".join(f"{k} {v}" for k, v in settings.items()) + ")"
    parts = []
    if converged is not None:
        parts.append("converged" if converged else "NOT converged")
    if max_force is not None:
        parts.append(f"max force {max_force:.3f} eV/Å")
    if n_steps is not None:
        parts[-1:] = [f"{parts[-1]} in {n_steps} steps"] if parts else [f"{n_steps} steps"]
    return text + ("; " + ", ".join(parts) if parts else "")


def reference_set_version(
    entries: Iterable[tuple[str, str, float]], scheme: str | None = None
) -> str:
    """A short hash naming one hull: every entry's id, cell formula and raw energy per atom
    (rounded to µeV/atom), plus the correction scheme. Order does not matter.

    The export's ``references.csv`` holds exactly these values, so the version can be
    recomputed from it (see :func:`matloop.results.rows.reference_version_of`).
    """
    lines = sorted(f"{eid}\t{formula}\t{float(e):.6f}" for eid, formula, e in entries)
    payload = "\n".join([f"scheme\t{scheme or ''}", *lines])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def strongest_evidence(*levels: str | None) -> str:
    """The strongest of several evidence levels (an ML evaluation and its DFT verification).

    Examples
    --------
    >>> strongest_evidence("mlip-relaxed", "dft-single-point")
    'dft-single-point'
    """
    order = [level.value for level in EvidenceLevel]
    known = [level for level in levels if level in order]
    return max(known, key=order.index) if known else EvidenceLevel.mlip_relaxed.value
