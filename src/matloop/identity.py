"""Deterministic candidate ids: the same crystal proposed twice is one record."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymatgen.core import Structure


def canonical_key(structure: Structure, symprec: float = 0.1) -> str:
    """A text key that is equal for symmetry-equivalent settings of one crystal.

    Built from the reduced formula, the space group, the primitive cell size, the
    conventional lattice parameters (rounded to 0.05 Å and 0.5°), the volume per atom and
    the multiset of site environments, so cell choice, site order and origin do not change
    it. Rounding makes near-identical crystals usually, not always, share a key: the loop
    still deduplicates with ``StructureMatcher``.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    formula = structure.composition.reduced_formula
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        number = analyzer.get_space_group_number()
        primitive = analyzer.find_primitive() or structure
        lattice = analyzer.get_conventional_standard_structure().lattice
        scale = len(analyzer.get_conventional_standard_structure()) / len(primitive)
    except Exception:  # symmetry search can fail on odd cells; fall back to the reduced cell
        primitive = structure.get_reduced_structure()
        number, lattice, scale = 1, primitive.lattice, 1.0
    # Per-site environments (element + counts of neighbours by element within 1.2x the
    # site's shortest bond) do not depend on origin or site order, and, unlike rounded
    # distances, do not flip on exact values such as 1.95 Å.
    environments = []
    for site, neighbours in zip(primitive, primitive.get_all_neighbors(4.0), strict=True):
        if not neighbours:
            environments.append(f"{site.specie}[]")
            continue
        shortest = min(nb.nn_distance for nb in neighbours)
        shell = sorted(str(nb.specie) for nb in neighbours if nb.nn_distance <= 1.2 * shortest)
        environments.append(f"{site.specie}[{','.join(shell)}]")
    env_hash = hashlib.sha256(";".join(sorted(environments)).encode()).hexdigest()[:8]
    lengths = "/".join(f"{round(x / 0.05) * 0.05:.2f}" for x in sorted(lattice.abc))
    angles = "/".join(f"{round(x / 0.5) * 0.5:.1f}" for x in sorted(lattice.angles))
    vol = f"{round(lattice.volume / scale / len(primitive), 1):.1f}"
    return f"{formula}|{number}|n={len(primitive)}|{lengths}|{angles}|{vol}|{env_hash}"


def candidate_id(structure: Structure) -> str:
    """Short stable id, e.g. ``CaTiO3-3f9a0c2b1d4e``."""
    key = canonical_key(structure)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{structure.composition.reduced_formula}-{digest}"


def reduced_for_matching(structure: Structure, primitive_cell: bool = True) -> Structure:
    """The cell pymatgen's ``StructureMatcher.fit`` reduces a structure to before matching
    (Niggli, then primitive), made once: ``fit(a, b, skip_structure_reduction=True)`` on
    two such cells decides as ``fit`` on the originals."""
    from pymatgen.core import Structure

    reduced = Structure.from_sites(structure).get_reduced_structure(reduction_algo="niggli")
    if primitive_cell:
        reduced = reduced.get_primitive_structure()
    return Structure.from_sites(reduced)
