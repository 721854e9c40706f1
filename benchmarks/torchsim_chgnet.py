"""CHGNet as a TorchSim model, through matloop's tensor-built graphs: a benchmark peer.

torch-sim-atomistic 0.3.0 ships models for MACE, SevenNet, ORB, MatterSim, FairChem, GraphPES
and metatomic, but none for CHGNet. So the ``torchsim`` path of
``benchmarks/relax_throughput.py`` runs TorchSim's optimiser and autobatcher on this adapter:
CHGNet's graphs built with tensors (:mod:`matloop.relax.graphs`) and matloop's model call
(``matloop.relax.batched._evaluate``), the same numbers the ``batched`` path gets. Not library
code: only the benchmark imports it, and only when torch_sim is installed.
"""

from __future__ import annotations

import torch
from torch_sim.models.interface import ModelInterface
from torch_sim.state import SimState

from matloop.relax.batched import ModelBatch, _evaluate, load_chgnet


class CHGNetModel(ModelInterface):
    """CHGNet 0.3.0 (chgnet's packaged weights, loaded offline) as a TorchSim model.

    TorchSim's interface is stateless, so every call lists the neighbours and builds the
    graphs afresh from the state (no Verlet skin, unlike matloop's batched path). Returns
    what TorchSim's optimisers read, in float64: total energies (n_systems,) in eV, forces
    (n_atoms, 3) in eV/Å and stresses (n_systems, 3, 3) in eV/Å³ with ASE's sign
    (``virial = -V stress``, as torch_sim's MACE and SevenNet models return them),
    symmetrised as ASE's calculators do.
    """

    def __init__(self, device: torch.device | str | None = None, model=None) -> None:
        super().__init__()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._device = torch.device(device)
        self._dtype = torch.float64  # the state and FIRE, as ASE's; CHGNet runs in float32
        self._compute_stress = True
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"  # a radial cut-off
        self.model = model if model is not None else load_chgnet(str(self._device))

    def forward(self, state: SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        if isinstance(state, dict):  # a state dict, as torch_sim's own models accept
            state = SimState(**state, masses=torch.ones_like(state["positions"]))
        f64 = {"dtype": torch.float64, "device": self._device}
        cells = state.row_vector_cell.to(**f64)  # rows are lattice vectors, as matloop's
        crystal_of = state.system_idx.to(device=self._device, dtype=torch.long)
        n = state.n_systems
        positions = state.positions.to(**f64)
        frac = torch.einsum("na,nab->nb", positions, torch.linalg.inv(cells)[crystal_of])
        inputs = ModelBatch.build(
            state.atomic_numbers.to(device=self._device, dtype=torch.int32), frac, cells,
            crystal_of, formulas=[""] * n,  # _evaluate reads only how many crystals there are
        )
        with torch.enable_grad():  # forces and stress are gradients, whatever the caller's mode
            per_atom, forces, stresses = _evaluate(self.model, inputs)
        atoms = torch.bincount(crystal_of, minlength=n).to(**f64)
        stresses = stresses.to(**f64)
        return {
            "energy": per_atom.to(**f64) * atoms,
            "forces": forces.to(**f64),
            "stress": 0.5 * (stresses + stresses.transpose(1, 2)),
        }
