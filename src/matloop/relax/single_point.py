"""Single-point CHGNet energies of many crystals at once, as proposed (no relaxation).

The screen uses them to rank proposals before any is relaxed (``acquisition.single_point``):
a relaxation only lowers a crystal's energy, so an unrelaxed crystal already close to the
hull is a likely hit, and the surrogate has only to learn how much relaxing lowers it. One
energy costs about what one relaxation step costs without the backward pass, so scoring a
round's whole pool costs less than relaxing one or two of its crystals.

The graphs are built with tensors, as in the batched relaxer (:mod:`matloop.relax.graphs`),
and the energies are CHGNet's energy per atom, the value relaxations report.

Examples
--------
>>> energies, errors = single_point_energies([si, nacl])  # doctest: +SKIP
>>> energies.shape, errors  # doctest: +SKIP
((2,), [None, None])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from matloop.relax.checks import exception_reason, quiet

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

__all__ = ["single_point_energies"]

#: Atoms per batched model call: a few thousand keeps a CPU call's memory near 1 GB.
CHUNK_ATOMS = 2048


def single_point_energies(
    structures: Sequence[Structure], *, device: str | None = None,
    chunk_atoms: int = CHUNK_ATOMS,
) -> tuple[np.ndarray, list[str | None]]:  # fmt: skip
    """CHGNet's energy per atom (eV/atom) of each structure as given.

    Returns the energies (NaN where none could be computed) and, per structure, None or why
    it could not be evaluated (e.g. a cell so collapsed that no neighbour list ends). A
    structure that breaks a batched call is evaluated alone, so it fails alone.
    """
    import torch

    from matloop.relax.batched import load_chgnet

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_chgnet(device)
    energies = np.full(len(structures), np.nan)
    errors: list[str | None] = [None] * len(structures)
    for rows in _chunks([len(s) for s in structures], chunk_atoms):
        try:
            energies[rows] = _energies(model, [structures[r] for r in rows], device)
        except Exception:  # find the culprit(s): one at a time
            for r in rows:
                try:
                    energies[r] = _energies(model, [structures[r]], device)[0]
                except Exception as exc:
                    errors[r] = exception_reason(exc)
    return energies, errors


def _chunks(sizes: list[int], chunk_atoms: int) -> list[list[int]]:
    """Consecutive rows grouped so each group holds at most ``chunk_atoms`` atoms (a larger
    crystal makes a group of its own)."""
    groups: list[list[int]] = []
    atoms = 0
    for row, n in enumerate(sizes):
        if not groups or atoms + n > chunk_atoms:
            groups.append([])
            atoms = 0
        groups[-1].append(row)
        atoms += n
    return groups


def _energies(model, structures: list[Structure], device: str) -> np.ndarray:
    """One batched CHGNet call: energies per atom of ``structures``."""
    import torch

    from matloop.relax.batched import ModelBatch, _composition_energy
    from matloop.relax.graphs import chgnet_inputs

    f64 = {"dtype": torch.float64, "device": device}
    numbers = torch.tensor([site.specie.Z for s in structures for site in s],
                           dtype=torch.int32, device=device)  # fmt: skip
    frac = torch.tensor(np.concatenate([s.frac_coords for s in structures]), **f64)
    cells = torch.tensor(np.stack([s.lattice.matrix for s in structures]), **f64)
    crystal_of = torch.repeat_interleave(
        torch.arange(len(structures), device=device),
        torch.tensor([len(s) for s in structures], device=device),
    )
    inputs = ModelBatch.build(numbers, frac, cells, crystal_of,
                              [s.composition.formula for s in structures])  # fmt: skip
    with torch.no_grad(), quiet(True):
        batched, _, _ = chgnet_inputs(model, inputs.graphs, numbers, frac, cells, crystal_of)
        prediction = model._compute(batched)
        energy = prediction["e"] + _composition_energy(model, inputs)
        if not model.is_intensive:
            energy = energy / prediction["atoms_per_graph"]
    return energy.double().cpu().numpy()
