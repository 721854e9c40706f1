"""The throughput benchmark's TorchSim peer (``benchmarks/torchsim_chgnet.py``) gives TorchSim's
optimiser CHGNet's own energies, forces and stresses, in TorchSim's units and signs: the same
values as CHGNet's ASE calculator on strained, rattled crystals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def crystals() -> list[Structure]:
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.5), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.5), ["Si"],
                                   [[0, 0, 0]]).get_primitive_structure()
    out = []
    for s in (nacl, si):
        s.apply_strain([0.03, -0.02, 0.01])
        s.perturb(0.1, min_distance=0.05)
        out.append(s)
    return out


def test_adapter_returns_chgnet_calculator_values():
    pytest.importorskip("torch_sim", reason="the torchsim peer needs pip install '.[bench]'")
    import torch_sim as ts
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor
    from torchsim_chgnet import CHGNetModel

    structures = crystals()
    model = CHGNetModel(device="cpu")
    state = ts.io.structures_to_state(structures, device="cpu", dtype=model.dtype)
    out = model(state)
    calculator = CHGNetCalculator(use_device="cpu")
    start = 0
    for b, structure in enumerate(structures):
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calculator
        n = len(structure)
        assert out["energy"][b].item() == pytest.approx(atoms.get_potential_energy(), abs=1e-3)
        np.testing.assert_allclose(out["forces"][start:start + n].numpy(), atoms.get_forces(),
                                   atol=1e-4)  # fmt: skip
        stress = atoms.get_stress(voigt=False)
        assert np.abs(stress).max() > 1e-3  # strained: a stress whose sign can be wrong
        np.testing.assert_allclose(out["stress"][b].numpy(), stress, atol=1e-5)
        start += n
