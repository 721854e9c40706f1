"""Tests for matloop.relax.single_point: CHGNet's single-point energies of many crystals in
batched calls, against CHGNet's own path, and a crystal that breaks failing alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matloop.relax.single_point import _chunks, single_point_energies

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_chunks_hold_at_most_the_atoms_asked_and_a_large_crystal_alone():
    assert _chunks([3, 3, 3, 10, 2], 6) == [[0, 1], [2], [3], [4]]
    assert _chunks([], 6) == []


def test_energies_equal_chgnet_own_on_real_and_rattled_crystals(shared_data: Path):
    import pandas as pd
    from chgnet.model import CHGNet

    frame = pd.read_csv(shared_data / "known_crystals_mp.csv.gz",
                        usecols=["material_id", "nsites", "cif"])  # fmt: skip
    rows = frame[frame["nsites"] <= 16].sort_values("material_id").sample(10, random_state=3)
    rng = np.random.default_rng(2)
    structures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, cif in enumerate(rows["cif"]):
            structure = Structure.from_str(cif, fmt="cif")
            if k % 2:  # as a generator proposes: strained, atoms off their minima
                structure.apply_strain(rng.normal(0, 0.05, 3).tolist())
                structure.perturb(0.1, min_distance=0.02)
            structures.append(structure)
    # small chunks: several batched calls, as for a large pool
    energies, errors = single_point_energies(structures, device="cpu", chunk_atoms=40)
    assert errors == [None] * len(structures)
    model = CHGNet.load(verbose=False)
    expected = [float(model.predict_structure(s, task="e")["e"]) for s in structures]
    np.testing.assert_allclose(energies, expected, atol=1e-4)


def test_a_crystal_that_cannot_be_evaluated_fails_alone():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    flat = Structure(Lattice([[4, 0, 0], [4, 1e-9, 0], [0, 0, 4]]), ["Na", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0.5]], validate_proximity=False)
    energies, errors = single_point_energies([nacl, flat, nacl], device="cpu")
    assert np.isfinite(energies[[0, 2]]).all() and energies[0] == pytest.approx(energies[2])
    assert np.isnan(energies[1]) and errors[1] is not None
    assert errors[0] is None and errors[2] is None
