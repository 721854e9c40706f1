from __future__ import annotations

from pymatgen.core import Lattice, Structure

from matloop.identity import candidate_id


def _perovskite(a: float = 3.9) -> Structure:
    return Structure(
        Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def test_same_crystal_in_another_setting_has_the_same_id():
    base = _perovskite()
    shifted = base.copy()
    shifted.translate_sites(range(len(shifted)), [0.5, 0.5, 0.5])
    shuffled = Structure.from_sites(list(reversed(shifted.sites)))
    supercell = base.copy()
    supercell.make_supercell([2, 1, 1])
    ids = {candidate_id(s) for s in (base, shuffled, supercell)}
    assert len(ids) == 1
    assert next(iter(ids)).startswith("SrTiO3-")


def test_different_crystals_have_different_ids():
    assert candidate_id(_perovskite(3.9)) != candidate_id(_perovskite(4.3))
    rocksalt = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cscl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert candidate_id(rocksalt) != candidate_id(cscl)
