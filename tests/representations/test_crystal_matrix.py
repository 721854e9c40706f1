from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from matloop.representations.crystal_matrix import CrystalMatrixEncoder, canonicalize

ELEMENTS = ["O", "F", "Ti", "Sr", "Na", "Cl", "Si"]


def perovskite() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def distorted() -> Structure:
    return Structure(
        Lattice.from_parameters(4.1, 4.3, 5.2, 88.0, 95.0, 101.0),
        ["Na", "Cl", "Si", "O", "O", "O"],
        [
            [0.01, 0.02, 0.0],
            [0.48, 0.51, 0.52],
            [0.2, 0.7, 0.1],
            [0.5, 0.1, 0.9],
            [0.33, 0.33, 0.6],
            [0.8, 0.2, 0.4],
        ],
    )


def rocksalt_conventional() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


MATCHER = StructureMatcher(stol=0.01, ltol=0.001, angle_tol=0.1, primitive_cell=False, scale=False)


@pytest.mark.parametrize("make", [perovskite, distorted, rocksalt_conventional])
def test_round_trip_matches(make):
    s = make()
    enc = CrystalMatrixEncoder(ELEMENTS, max_atoms=8)
    mat = enc.encode(s)
    assert mat.shape == enc.shape
    back = enc.decode(mat)
    assert back.composition == s.composition
    assert MATCHER.fit(back, s)
    # Encoding is a fixed point: decode -> encode gives the same matrix.
    np.testing.assert_allclose(enc.encode(back), mat, atol=1e-6)


@pytest.mark.parametrize("make", [perovskite, distorted])
def test_one_crystal_one_encoding(make):
    """Translating, permuting sites, and relabelling the axes of a crystal leaves the
    encoding unchanged."""
    s = make()
    enc = CrystalMatrixEncoder(ELEMENTS, max_atoms=8)
    ref = enc.encode(s)
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = s.copy()
        t.translate_sites(list(range(len(t))), rng.random(3), frac_coords=True, to_unit_cell=True)
        order = rng.permutation(len(t))
        t = Structure(t.lattice, [t[i].specie for i in order], [t[i].frac_coords for i in order])
        np.testing.assert_allclose(enc.encode(t), ref, atol=2e-6)
    # A cubic cell with its axes relabelled (b, c, a): same encoding.
    p = perovskite()
    swapped = Structure(
        Lattice(p.lattice.matrix[[1, 2, 0]]), p.species, p.frac_coords[:, [1, 2, 0]]
    )
    np.testing.assert_allclose(enc.encode(swapped), enc.encode(p), atol=1e-6)


def test_canonical_order_and_padding():
    s = perovskite()
    enc = CrystalMatrixEncoder(ELEMENTS, max_atoms=8)
    params, classes, coords = enc.encode_parts(s)
    assert np.allclose(params, [3.905] * 3 + [90.0] * 3)
    # Sorted by Z: O, O, O, Ti, Sr, then three empty slots.
    assert [enc.elements[c - 1] for c in classes[:5]] == ["O", "O", "O", "Ti", "Sr"]
    assert np.all(classes[5:] == 0)
    assert np.all((coords >= 0) & (coords < 1))
    # Origin on the rarest, lightest element (Ti, count 1, Z 22 < Sr 38).
    assert np.allclose(coords[3], 0.0)
    assert canonicalize(s).composition == s.composition


def test_errors():
    enc = CrystalMatrixEncoder(["O"], max_atoms=2)
    with pytest.raises(ValueError, match="max_atoms"):
        enc.encode(perovskite())
    enc = CrystalMatrixEncoder(["O", "Ti"], max_atoms=5)
    with pytest.raises(ValueError, match="Z=38"):
        enc.encode(perovskite())


def test_snapping_rounds_near_symmetric_cells():
    from matloop.representations.crystal_matrix import snap_coords, snap_lattice

    p = snap_lattice(
        np.array([[4.0, 4.05, 3.98, 88.5, 90.4, 91.9], [3.0, 4.0, 5.0, 80.0, 90, 119]])
    )
    assert np.allclose(p[0], [4.01, 4.01, 4.01, 90, 90, 90])
    assert np.allclose(p[1], [3.0, 4.0, 5.0, 80.0, 90.0, 120.0])
    f = snap_coords(np.array([[0.98, 0.52, 0.2], [0.26, 0.345, 0.999]]))
    assert np.allclose(f, [[0.0, 0.5, 0.2], [0.25, 1 / 3, 0.0]])


def test_position_site_order_fixes_slots_of_a_structure_type():
    from pymatgen.core import Lattice, Structure

    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    enc = CrystalMatrixEncoder(["O", "Ti", "Sr", "Ba", "Zr"], max_atoms=5, site_order="position")
    a = enc.encode_parts(Structure(Lattice.cubic(4.0), ["Sr", "Ti", "O", "O", "O"], coords))
    b = enc.encode_parts(Structure(Lattice.cubic(4.2), ["Ba", "Zr", "O", "O", "O"], coords))
    assert np.allclose(a[2], b[2])  # same coordinate rows whatever the elements
    s = enc.decode_parts(*a)
    assert s.composition.reduced_formula == "SrTiO3"


def test_canonical_arrays_are_remembered_by_content(monkeypatch):
    """A crystal read again (a new object, same lattice, species and coordinates) is not
    canonicalised again; a changed one is; callers get their own copies."""
    from pymatgen.core import Lattice, Structure

    from matloop.representations import crystal_matrix

    calls = []
    real = crystal_matrix._canonical_arrays

    def counting(structure, site_order):
        calls.append(len(structure))
        return real(structure, site_order)

    monkeypatch.setattr(crystal_matrix, "_CANONICAL", {})
    monkeypatch.setattr(crystal_matrix, "_canonical_arrays", counting)

    def make(x: float) -> Structure:
        return Structure(Lattice.orthorhombic(3.1, 4.2, 5.3), ["Li", "O", "O"],
                         [[0, 0, 0], [x, 0.5, 0.5], [0.5, 0.1, 0.7]])  # fmt: skip

    first = crystal_matrix.canonical_arrays(make(0.25))
    first[0][:] = -1.0  # a caller writing into its arrays does not change the remembered ones
    again = crystal_matrix.canonical_arrays(make(0.25))
    assert len(calls) == 1
    for got, want in zip(again, real(make(0.25), "species"), strict=True):
        np.testing.assert_array_equal(got, want)
    crystal_matrix.canonical_arrays(make(0.3))
    crystal_matrix.canonical_arrays(make(0.25), site_order="position")
    assert len(calls) == 3
