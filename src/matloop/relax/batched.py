"""Batched relaxation: many crystals relaxed together with CHGNet in one torch state.

The per-structure path (:func:`matloop.relax.runner.relax_structures`) runs one atomate2 job
per crystal: ASE's FIRE optimiser on a ``FrechetCellFilter``, one CHGNet call per step.
:class:`BatchedRelaxer` runs the same algorithm for many crystals at once, in the spirit of
torch-sim: the positions, cells and FIRE state of every crystal in the batch live in
concatenated tensors (``crystal_of`` maps each atom to its crystal), and each step makes one
batched CHGNet call for all crystals still relaxing. A crystal leaves the batch as soon as it
is done (converged, out of steps, or broken) and the next waiting crystal takes its place, so
the batch stays full.

Same results as the per-structure path
--------------------------------------
Per crystal it mirrors what atomate2's ``ForceFieldRelaxMaker`` does by default:

- FIRE with ASE's default parameters (:class:`_Fire`). As in ASE, the velocity mixing, the
  restart test (power ``F·v``) and the 0.2 Å step cap act on each crystal's whole vector of
  degrees of freedom: its atoms and its cell together.
- ASE's ``FrechetCellFilter`` for the cell: the degrees of freedom are the atom positions in
  the starting cell plus ``N log(F)`` of the deformation gradient ``F`` (``N`` atoms); the
  generalised forces are ``f F`` on atoms and, on the cell, the adjoint Fréchet derivative of
  the matrix exponential applied to the virial (one 6x6 matrix exponential, see
  :func:`_cell_forces`), divided by ``N``.
- Convergence: every row of the generalised force (each atom and the three cell rows) below
  ``fmax``, tested before the first step and after each step, at most ``steps`` steps. So
  the stress counts, exactly as in the per-structure path.
- Energy: CHGNet's energy per atom, the value atomate2's task documents report.

Only floating-point details differ (CHGNet runs in float32, sums run in another order), so
trajectories drift apart slightly but end in the same minima: ``tests/relax/test_batched.py``
checks energies within 5 meV/atom and matching relaxed structures (``StructureMatcher``) on
real crystals. That is why outcomes carry the same potential name as the per-structure path
(``"CHGNet 0.3.0"``): both feed the same hulls.

Differences that leave results alone: there is no jobflow job and no task document
(``job_uuid`` is None); a crystal whose volume leaves the ``max_volume_ratio`` window stops at
once instead of running to the end; ``wall_s`` is the crystal's share of the batch's time.

Speed: CHGNet's graphs are built for the whole batch with tensors on the model's device
(:mod:`matloop.relax.graphs`), the neighbour lists reused across steps with a Verlet skin, and
no pymatgen object is made between a crystal's entry and its exit; forces and stress come from
one backward pass without a double-backward graph (CHGNet's own ``forward`` builds one for
training). Batches fill by graph size within a memory budget (:mod:`matloop.relax.autobatch`).
On a CPU the model's own forward and backward passes are then nearly all the time; on a GPU
the batch fills the device.

Examples
--------
>>> relaxer = BatchedRelaxer(fmax=0.05, steps=300, batch_size=32)
>>> outcomes = relaxer.relax([("si", si), ("nacl", nacl)], max_atoms=20)  # doctest: +SKIP
>>> outcomes[0].ok, outcomes[0].potential  # doctest: +SKIP
(True, 'CHGNet 0.3.0')
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymatgen.core import Lattice, Structure

from matloop.relax.checks import (
    TaskResult,
    exception_reason,
    judge,
    quiet,
    reject_reason,
    thread_limits,
)
from matloop.relax.outcome import RelaxOutcome

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from chgnet.model import CHGNet
    from pymatgen.core import Species

    from matloop.relax.graphs import CrystalGraphs

__all__ = ["BatchedRelaxer", "clear_model_cache", "load_chgnet", "relax_batched"]

#: CHGNet reports stress in GPa; 1 eV/Å³ is this many GPa.
_GPA_PER_EV_A3 = 160.21766208


@dataclass(frozen=True)
class _Fire:
    """ASE's FIRE defaults (``ase.optimize.FIRE``), which atomate2 uses unchanged."""

    dt: float = 0.1  # first time step
    maxstep: float = 0.2  # largest step of a crystal's whole degree-of-freedom vector
    dtmax: float = 1.0
    n_min: int = 5  # downhill steps before dt may grow
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1  # velocity-mixing weight after a restart
    fa: float = 0.99


_FIRE = _Fire()


@dataclass
class BatchedRelaxer:
    """Relax crystals in batches with CHGNet: FIRE with Fréchet cell relaxation on torch.

    Settings mirror :func:`matloop.relax.makers.make_relax_maker`; the relaxed structures and
    energies agree with that per-structure path (see the module documentation).

    Parameters
    ----------
    fmax : float
        Convergence threshold in eV/Å on every atomic force and, when the cell relaxes, on
        the cell's generalised forces (the stress).
    steps : int
        Most optimiser steps per crystal.
    relax_cell : bool
        Whether the cell shape and volume relax too.
    batch_size : int
        Most crystals relaxing together.
    max_batch_atoms : int or None
        Most atoms in a batch (bounds memory on a GPU); a crystal larger than this still
        relaxes, alone. None: only ``batch_size`` limits the batch.
    max_atoms : int or None
        Larger crystals fail their pre-check (the default of :meth:`relax`'s ``max_atoms``).
    device : str or None
        Torch device, e.g. ``"cuda"`` or ``"cpu"``; None picks CUDA when present. Ignored
        when ``model`` is given: the relaxation runs where the model is.
    model : chgnet.model.CHGNet or None
        A loaded CHGNet; None loads CHGNet 0.3.0 (its default) once per process and device.
    skin : float
        Verlet skin of the neighbour lists in Å: a crystal's list (within 6 Å + skin) is
        rebuilt only when its atoms or cell have moved enough that it may miss a pair.
    max_batch_elements : int or None
        Most graph elements (atoms + edges + angles of CHGNet's graphs) in a batch. None:
        on a GPU, sized from its free memory (:class:`matloop.relax.autobatch.MemoryBudget`);
        on a CPU, no limit beyond ``batch_size``.
    memory_fraction : float
        Share of the GPU's free memory a batch may fill when ``max_batch_elements`` is None.

    Examples
    --------
    >>> BatchedRelaxer(steps=100).batch_size
    32
    """

    fmax: float = 0.05
    steps: int = 300
    relax_cell: bool = True
    batch_size: int = 32
    max_batch_atoms: int | None = None
    max_atoms: int | None = None
    device: str | None = None
    model: Any = field(default=None, repr=False)
    skin: float = 1.0
    max_batch_elements: int | None = None
    memory_fraction: float = 0.7

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.steps < 0:
            raise ValueError(f"steps must not be negative, not {self.steps}")

    @property
    def claim_size(self) -> int:
        """Candidates the loop hands over at once (see :class:`matloop.relax.relaxer.Relaxer`)."""
        return self.batch_size

    @property
    def potential(self) -> str:
        """Potential name stored with every outcome, e.g. ``"CHGNet 0.3.0"``."""
        # relax.potentials imports no atomate2: the batched path runs where only CHGNet is
        # installed (gpu_check)
        from matloop.relax.potentials import potential_version

        if self.model is None:
            return potential_version("CHGNet")
        return potential_version("CHGNet", {"model": self.model})

    def relax(
        self,
        items: list[tuple[str, Structure]],
        *,
        max_atoms: int | None = None,
        max_volume_ratio: float = 3.0,
        progress: Callable[[int, int], None] | None = None,
        min_distance: float = 0.5,
        max_volume_per_atom: float | None = 200.0,
        num_threads: int | None = 1,
        log: bool = False,
        on_outcome: Callable[[RelaxOutcome], None] | None = None,
    ) -> list[RelaxOutcome]:
        """Relax structures together and summarise each result.

        Takes the keyword arguments of :func:`matloop.relax.runner.relax_structures` and
        returns the same outcomes: the same pre-checks, failure reasons and fields (with
        ``job_uuid`` None). One failing crystal never stops the others in its batch.

        Parameters
        ----------
        items : list of (str, Structure)
            Candidate ids and their structures.
        max_atoms, max_volume_ratio, min_distance, max_volume_per_atom, num_threads, log
            As in :func:`~matloop.relax.runner.relax_structures`.
        progress : callable, optional
            Called as ``progress(done, total)`` each time a crystal finishes (crystals finish
            in any order).
        on_outcome : callable, optional
            Called with each crystal's outcome the moment it finishes (the Dask chunks of
            :mod:`matloop.relax.cluster` stream them back this way).

        Returns
        -------
        list of RelaxOutcome
            One per item, in order.
        """
        outcomes: list[RelaxOutcome | None] = [None] * len(items)
        remaining = iter(items)
        done = 0

        def collect(index: int, outcome: RelaxOutcome) -> None:
            nonlocal done
            outcomes[index] = outcome
            done += 1
            if on_outcome is not None:
                on_outcome(outcome)
            if progress is not None:
                progress(done, len(items))

        self.relax_from(
            lambda n: list(itertools.islice(remaining, n)), collect, max_atoms=max_atoms,
            max_volume_ratio=max_volume_ratio, min_distance=min_distance,
            max_volume_per_atom=max_volume_per_atom, num_threads=num_threads, log=log,
        )  # fmt: skip
        return outcomes  # type: ignore[return-value]  # every slot is filled by now

    def relax_from(
        self,
        take: Callable[[int], list[tuple[str, Structure]]],
        on_outcome: Callable[[int, RelaxOutcome], None],
        *,
        max_atoms: int | None = None,
        max_volume_ratio: float = 3.0,
        min_distance: float = 0.5,
        max_volume_per_atom: float | None = 200.0,
        num_threads: int | None = 1,
        log: bool = False,
    ) -> int:
        """Relax crystals drawn from ``take`` as room opens in the batch.

        :meth:`relax` draws from a list; a Dask worker draws from the round's shared queue
        (:mod:`matloop.relax.cluster`), so workers that finish early take more crystals.

        Parameters
        ----------
        take : callable
            ``take(n)`` returns up to ``n`` more (id, structure) pairs; an empty list means
            there are no more, and ``take`` is not called again.
        on_outcome : callable
            Called as ``on_outcome(k, outcome)`` when the ``k``-th crystal taken (from 0)
            finishes; crystals finish in any order.
        max_atoms, max_volume_ratio, min_distance, max_volume_per_atom, num_threads, log
            As in :meth:`relax`.

        Returns
        -------
        int
            The number of crystals taken (each got its outcome).
        """
        if max_atoms is None:
            max_atoms = self.max_atoms
        potential = self.potential
        items: list[tuple[str, Structure]] = []  # every crystal taken so far, in order

        def finish(index: int, wall_s: float, fields: dict[str, Any]) -> None:
            on_outcome(index, RelaxOutcome(candidate_id=items[index][0], potential=potential,
                                           wall_s=wall_s, **fields))  # fmt: skip

        def draw(n: int) -> list[tuple[int, float]] | None:
            """Up to ``n`` more crystals that pass the pre-checks, as (index, seconds spent
            on their checks); None when ``take`` has no more."""
            new = take(n)
            if not new:
                return None
            passed = []
            for cid, structure in new:
                start, index = time.perf_counter(), len(items)
                items.append((cid, structure))
                reason = reject_reason(structure, max_atoms, min_distance, max_volume_per_atom)
                if reason is None:
                    passed.append((index, time.perf_counter() - start))
                else:
                    finish(index, time.perf_counter() - start, {"ok": False, "reason": reason})
            return passed

        with quiet(not log), thread_limits(num_threads):
            self._run(items, draw, max_volume_ratio, finish)
        return len(items)

    # -- the batch loop ----------------------------------------------------------------------
    def _run(
        self,
        items: list[tuple[str, Structure]],
        draw: Callable[[int], list[tuple[int, float]] | None],
        max_volume_ratio: float,
        finish: Callable[[int, float, dict[str, Any]], None],
    ) -> None:
        """Relax crystals as ``draw`` hands them over, keeping the batch full, and
        ``finish`` each one.

        Each pass mirrors one iteration of ASE's ``Optimizer.irun``: evaluate every crystal
        in the batch, let those that are done leave (converged, out of steps, broken), then
        take one FIRE step with the rest.
        """
        from matloop.relax.autobatch import MemoryBudget

        model, batch = None, None  # the model loads when the first crystal passes its checks
        queue: list[tuple[int, float]] = []  # drawn, waiting for room; pop() takes the first
        more = True
        while True:
            in_batch = len(batch) if batch is not None else 0
            while more and in_batch + len(queue) < self.batch_size:
                drawn = draw(self.batch_size - in_batch - len(queue))
                if drawn is None:
                    more = False
                else:
                    queue[:0] = reversed(drawn)
            if not (queue or in_batch):
                if more:
                    continue  # every crystal drawn so far failed its pre-checks
                break
            if batch is None:
                model = self.model if self.model is not None else _load_chgnet(self._device())
                batch = _Batch(next(model.parameters()).device, skin=self.skin)
                batch.budget = MemoryBudget(str(batch.device), self.max_batch_elements,
                                            self.memory_fraction)  # fmt: skip
            self._refill(batch, queue, items)
            start = time.perf_counter()
            now = self._evaluate(model, batch, max_volume_ratio)
            batch.share_time(time.perf_counter() - start)
            for b in now.stop.nonzero().flatten().tolist():
                member = batch.members[b]
                fields = self._fields(batch, now, b, items[member.index][1], max_volume_ratio)
                finish(member.index, member.wall_s, fields)

            start = time.perf_counter()
            keep = ~now.stop
            atom_keep = keep[batch.crystal_of]
            batch.keep(keep)
            if len(batch):
                batch.fire_step(now.atom_force[atom_keep], now.cell_force[keep])
            batch.share_time(time.perf_counter() - start)

    def _refill(
        self, batch: _Batch, queue: list[tuple[int, float]], items: list[tuple[str, Structure]]
    ) -> None:
        """Move waiting crystals into the batch while ``batch_size``, ``max_batch_atoms``
        and the memory budget allow (an empty batch always takes one)."""
        from matloop.relax.autobatch import estimated_elements

        elements = sum(m.elements for m in batch.members)
        while queue and len(batch) < self.batch_size:
            index, check_s = queue[-1]
            structure = items[index][1]
            n_atoms = len(structure)
            if (len(batch) and self.max_batch_atoms is not None
                    and batch.n_atoms + n_atoms > self.max_batch_atoms):  # fmt: skip
                break
            joining = estimated_elements(n_atoms, structure.volume)
            if not batch.budget.admits(elements, joining, len(batch)):
                break
            queue.pop()
            batch.add(index, structure, check_s, elements=joining)
            elements += joining

    def _evaluate(self, model: CHGNet, batch: _Batch, max_volume_ratio: float) -> _Evaluation:
        """CHGNet on the batch's current crystals, the filter's forces, and who stops now."""
        import torch

        deform = batch.deformation()
        cells, positions = batch.cells_and_positions(deform)
        energy, forces, stress, errors = _predict(model, batch, cells)

        # ASE's FrechetCellFilter forces, and what it tests for convergence
        atom_force = torch.einsum("ni,nij->nj", forces, deform[batch.crystal_of])
        if self.relax_cell:
            cell_force = _cell_forces(batch, deform, cells, stress)
        else:
            cell_force = torch.zeros_like(deform)
        residual = torch.maximum(
            batch.per_crystal_max(atom_force.norm(dim=1)), cell_force.norm(dim=2).amax(dim=1)
        )
        forces_finite = torch.isfinite(batch.per_crystal_sum(forces.sum(dim=1))) & (
            torch.isfinite(stress.sum(dim=(1, 2)))
        )
        healthy = torch.isfinite(energy) & forces_finite
        # atomate2 takes steps <= 1 as a single-point calculation, converged by definition
        single_point = self.steps <= 1
        converged = healthy & ((residual < self.fmax) | single_point)
        out_of_steps = batch.n_steps >= (0 if single_point else self.steps)
        volume_ratio = torch.linalg.det(cells).abs() / batch.volume0
        out_of_window = (volume_ratio > max_volume_ratio) | (volume_ratio < 1 / max_volume_ratio)
        failed = torch.tensor([e is not None for e in errors], device=batch.device)
        return _Evaluation(
            cells=cells,
            positions=positions,
            energy=energy,
            max_force=batch.per_crystal_max(forces.norm(dim=1)),
            stress_gpa=stress.abs().amax(dim=(1, 2)) * _GPA_PER_EV_A3,
            forces_finite=forces_finite,
            errors=errors,
            atom_force=atom_force,
            cell_force=cell_force,
            converged=converged,
            n_steps=batch.n_steps,
            stop=converged | ~healthy | out_of_steps | out_of_window | failed,
        )

    def _fields(
        self, batch: _Batch, now: _Evaluation, b: int, start: Structure, max_volume_ratio: float
    ) -> dict[str, Any]:
        """The outcome fields of batch row ``b``, which stops now, judged as the
        per-structure path judges (:func:`matloop.relax.checks.judge`)."""
        if now.errors[b] is not None:  # its graph or the model call raised
            return {"ok": False, "reason": now.errors[b]}
        energy = float(now.energy[b])
        if math.isfinite(energy) and not bool(now.forces_finite[b]):
            return {
                "ok": False,
                "reason": "forces or stress are NaN",
                "structure": batch.structure(b, now.cells, now.positions),
                "energy_per_atom": energy,
            }
        result = TaskResult(  # what checks.read_task_doc reads from an atomate2 task document
            structure=batch.structure(b, now.cells, now.positions),
            energy_per_atom=energy,
            n_steps=int(now.n_steps[b]) + 2,  # atomate2 counts the first and last frames
            max_force=float(now.max_force[b]),
            converged=bool(now.converged[b]),
            stress_gpa=float(now.stress_gpa[b]),
            max_steps=self.steps,
        )
        return judge(result, start, None, max_volume_ratio)

    def _device(self) -> str:
        if self.device is not None:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def relax_batched(
    items: list[tuple[str, Structure]],
    *,
    fmax: float = 0.05,
    steps: int = 300,
    relax_cell: bool = True,
    batch_size: int = 32,
    device: str | None = None,
    **relax_kwargs: Any,
) -> list[RelaxOutcome]:
    """Relax ``items`` with a :class:`BatchedRelaxer`; a shortcut for one call.

    Examples
    --------
    >>> outs = relax_batched([("si", si)], steps=200, max_atoms=20)  # doctest: +SKIP
    """
    relaxer = BatchedRelaxer(
        fmax=fmax, steps=steps, relax_cell=relax_cell, batch_size=batch_size, device=device
    )
    return relaxer.relax(items, **relax_kwargs)


@dataclass
class _Evaluation:
    """One evaluation of a batch: per crystal (rows), or per atom where noted."""

    cells: torch.Tensor  # (B, 3, 3) current cells
    positions: torch.Tensor  # (atoms, 3) current Cartesian positions
    energy: torch.Tensor  # eV/atom
    max_force: torch.Tensor  # largest Cartesian force, eV/Å
    stress_gpa: torch.Tensor  # largest stress component, GPa
    forces_finite: torch.Tensor  # forces and stress are finite
    errors: list[str | None]  # why the model could not evaluate it
    atom_force: torch.Tensor  # per atom: the filter's generalised force
    cell_force: torch.Tensor  # (B, 3, 3): the filter's generalised cell force
    converged: torch.Tensor
    n_steps: torch.Tensor  # FIRE steps taken so far
    stop: torch.Tensor  # leaves the batch now


# -- the state of a batch ----------------------------------------------------------------------
@dataclass
class _Member:
    """What the batch keeps outside tensors about one crystal."""

    index: int  # position in the caller's items
    species: list[Species]
    n_atoms: int
    wall_s: float  # seconds spent on it so far
    formula: str  # as CHGNet's CrystalGraph.composition, e.g. "Na1 Cl1"
    elements: int  # atoms + edges + angles of its graph (estimated until it is built)


class _Batch:
    """Positions, cells and FIRE state of the crystals relaxing together.

    Atoms of all crystals are concatenated; ``crystal_of[i]`` is the batch row of atom ``i``.
    Per crystal ``b`` (a row of the per-crystal tensors): ``cell0[b]`` is its starting cell
    (rows are lattice vectors), ``cell_x[b] = N log F`` its cell degrees of freedom, with
    ``F`` the deformation gradient (current cell ``cell0 @ F.T``); per atom, ``x`` is the
    position in the starting cell (current position ``x @ F.T``). ``v`` and ``cell_v`` are
    the FIRE velocities; ``dt``, ``alpha`` and ``n_pos`` (downhill steps in a row) the rest of
    FIRE's state, as in ASE. Everything is float64, as ASE's numpy arrays are.

    (ASE's own cell coordinates are ``N log(N F)``, ours shifted by the constant
    ``N log N``; FIRE only ever adds steps to them, so the two move alike.)
    """

    def __init__(self, device: torch.device, skin: float = 1.0) -> None:
        import torch

        from matloop.relax.autobatch import MemoryBudget
        from matloop.relax.graphs import ATOM_CUTOFF, VerletLists

        self.device = device
        self.members: list[_Member] = []
        f64 = {"dtype": torch.float64, "device": device}
        self.x = torch.zeros((0, 3), **f64)
        self.v = torch.zeros((0, 3), **f64)
        self.crystal_of = torch.zeros(0, dtype=torch.long, device=device)
        self.cell0 = torch.zeros((0, 3, 3), **f64)
        self.cell_x = torch.zeros((0, 3, 3), **f64)
        self.cell_v = torch.zeros((0, 3, 3), **f64)
        self.volume0 = torch.zeros(0, **f64)
        self.n = torch.zeros(0, **f64)  # atoms per crystal, as a float for scaling
        self.dt = torch.zeros(0, **f64)
        self.alpha = torch.zeros(0, **f64)
        self.n_pos = torch.zeros(0, dtype=torch.long, device=device)
        self.n_steps = torch.zeros(0, dtype=torch.long, device=device)
        self.atomic_numbers = torch.zeros(0, dtype=torch.int32, device=device)
        self.inv_cell0 = torch.zeros((0, 3, 3), **f64)
        self.lists = VerletLists(cutoff=ATOM_CUTOFF, skin=skin)
        self.budget = MemoryBudget(str(device))

    def __len__(self) -> int:
        return len(self.members)

    @property
    def n_atoms(self) -> int:
        return int(self.x.shape[0])

    def add(self, index: int, structure: Structure, wall_s: float, elements: int = 0) -> None:
        """Append a crystal at rest, in its starting cell (F = identity)."""
        import torch

        f64 = {"dtype": torch.float64, "device": self.device}
        n = len(structure)
        row = len(self.members)
        self.members.append(
            _Member(index, list(structure.species), n, wall_s, structure.composition.formula,
                    elements)  # fmt: skip
        )
        self.atomic_numbers = torch.cat([
            self.atomic_numbers,
            torch.tensor([site.specie.Z for site in structure], dtype=torch.int32,
                         device=self.device),
        ])  # fmt: skip
        self.x = torch.cat([self.x, torch.tensor(structure.cart_coords, **f64)])
        self.v = torch.cat([self.v, torch.zeros((n, 3), **f64)])
        self.crystal_of = torch.cat(
            [self.crystal_of, torch.full((n,), row, dtype=torch.long, device=self.device)]
        )
        cell = torch.tensor(structure.lattice.matrix, **f64)
        self.cell0 = torch.cat([self.cell0, cell[None]])
        self.cell_x = torch.cat([self.cell_x, torch.zeros((1, 3, 3), **f64)])
        self.cell_v = torch.cat([self.cell_v, torch.zeros((1, 3, 3), **f64)])
        self.volume0 = torch.cat([self.volume0, torch.linalg.det(cell).abs()[None]])
        self.inv_cell0 = torch.cat([self.inv_cell0, torch.linalg.inv(cell)[None]])
        self.n = torch.cat([self.n, torch.tensor([float(n)], **f64)])
        self.dt = torch.cat([self.dt, torch.tensor([_FIRE.dt], **f64)])
        self.alpha = torch.cat([self.alpha, torch.tensor([_FIRE.astart], **f64)])
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        self.n_pos = torch.cat([self.n_pos, zero])
        self.n_steps = torch.cat([self.n_steps, zero])

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the crystals whose ``mask`` entry is False."""
        import torch

        atom_mask = mask[self.crystal_of]
        self.lists.keep(mask, self.crystal_of)
        new_row = torch.cumsum(mask.long(), 0) - 1  # old row -> new row of kept crystals
        self.crystal_of = new_row[self.crystal_of[atom_mask]]
        self.x, self.v = self.x[atom_mask], self.v[atom_mask]
        self.atomic_numbers = self.atomic_numbers[atom_mask]
        for name in ("cell0", "cell_x", "cell_v", "volume0", "n", "dt", "alpha", "n_pos",
                     "n_steps", "inv_cell0"):  # fmt: skip
            setattr(self, name, getattr(self, name)[mask])
        self.members = [m for m, k in zip(self.members, mask.tolist(), strict=True) if k]

    # -- geometry ----------------------------------------------------------------------
    def deformation(self) -> torch.Tensor:
        """Deformation gradients ``F = exp(cell_x / N)``, one 3x3 per crystal."""
        import torch

        return torch.linalg.matrix_exp(self.cell_x / self.n[:, None, None])

    def cells_and_positions(self, deform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Current cells (rows are lattice vectors) and Cartesian positions."""
        import torch

        cells = self.cell0 @ deform.transpose(1, 2)
        positions = torch.einsum("nj,nkj->nk", self.x, deform[self.crystal_of])
        return cells, positions

    def frac(self) -> torch.Tensor:
        """Fractional coordinates: the cell's deformation moves atoms with it, so they are
        those of ``x`` in the starting cell."""
        import torch

        return torch.einsum("na,nab->nb", self.x, self.inv_cell0[self.crystal_of])

    def structure(self, b: int, cells: torch.Tensor, positions: torch.Tensor) -> Structure:
        """Crystal ``b`` as a pymatgen structure (only for outcomes: never per step)."""
        member = self.members[b]
        start = int((self.crystal_of < b).sum())
        coords = positions[start : start + member.n_atoms].detach().cpu().numpy()
        lattice = Lattice(cells[b].detach().cpu().numpy())
        return Structure(lattice, member.species, coords, coords_are_cartesian=True)

    # -- per-crystal reductions ----------------------------------------------------------
    def per_crystal_sum(self, atom_values: torch.Tensor) -> torch.Tensor:
        """Sum of per-atom values within each crystal."""
        import torch

        out = torch.zeros(len(self), dtype=atom_values.dtype, device=self.device)
        return out.index_add_(0, self.crystal_of, atom_values)

    def per_crystal_max(self, atom_values: torch.Tensor) -> torch.Tensor:
        """Largest of non-negative per-atom values within each crystal (NaN propagates)."""
        import torch

        out = torch.zeros(len(self), dtype=atom_values.dtype, device=self.device)
        return out.scatter_reduce(0, self.crystal_of, atom_values, reduce="amax")

    def _dot(self, a: torch.Tensor, a_cell: torch.Tensor, b: torch.Tensor,
             b_cell: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Per-crystal dot product over all degrees of freedom (atoms and cell), as
        ``np.vdot`` over ASE's flattened vector."""
        return self.per_crystal_sum((a * b).sum(dim=1)) + (a_cell * b_cell).sum(dim=(1, 2))

    def share_time(self, seconds: float) -> None:
        """Split ``seconds`` of batch work among the crystals, by their number of atoms."""
        total = max(self.n_atoms, 1)
        for member in self.members:
            member.wall_s += seconds * member.n_atoms / total

    # -- the optimiser ---------------------------------------------------------------------
    def fire_step(self, force: torch.Tensor, cell_force: torch.Tensor) -> None:
        """One FIRE step of every crystal, exactly as ``ase.optimize.FIRE.step``.

        ``force`` and ``cell_force`` are the generalised forces (minus the gradient) on the
        atoms and cell degrees of freedom of the crystals now in the batch.
        """
        import torch

        p = _FIRE
        started = self.n_steps > 0  # ASE skips the velocity update on its first step
        vf = self._dot(force, cell_force, self.v, self.cell_v)
        f2 = self._dot(force, cell_force, force, cell_force)
        v2 = self._dot(self.v, self.cell_v, self.v, self.cell_v)
        downhill = started & (vf > 0.0)
        uphill = started & ~(vf > 0.0)

        # downhill: mix the velocity towards the force, speed up after n_min such steps
        mix = torch.where(downhill, self.alpha * torch.sqrt(v2 / f2.clamp_min(1e-300)), 0.0)
        keep_v = torch.where(downhill, 1.0 - self.alpha, 1.0)
        keep_v = torch.where(uphill, 0.0, keep_v)  # uphill: stop dead
        self.v = self._atoms(keep_v) * self.v + self._atoms(mix) * force
        self.cell_v = keep_v[:, None, None] * self.cell_v + mix[:, None, None] * cell_force
        grow = downhill & (self.n_pos > p.n_min)
        self.dt = torch.where(grow, torch.clamp(self.dt * p.finc, max=p.dtmax), self.dt)
        self.alpha = torch.where(grow, self.alpha * p.fa, self.alpha)
        self.n_pos = torch.where(downhill, self.n_pos + 1, self.n_pos)
        # uphill: restart with a smaller time step
        self.alpha = torch.where(uphill, p.astart, self.alpha)
        self.dt = torch.where(uphill, self.dt * p.fdec, self.dt)
        self.n_pos = torch.where(uphill, 0, self.n_pos)

        # Euler step, capped at maxstep over the crystal's whole vector
        self.v = self.v + self._atoms(self.dt) * force
        self.cell_v = self.cell_v + self.dt[:, None, None] * cell_force
        dr, dr_cell = self._atoms(self.dt) * self.v, self.dt[:, None, None] * self.cell_v
        norm = torch.sqrt(self._dot(dr, dr_cell, dr, dr_cell))
        scale = torch.where(norm > p.maxstep, p.maxstep / norm.clamp_min(1e-300), 1.0)
        self.x = self.x + self._atoms(scale) * dr
        self.cell_x = self.cell_x + scale[:, None, None] * dr_cell
        self.n_steps = self.n_steps + 1

    def _atoms(self, per_crystal: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-crystal scalar to an (atoms, 1) column."""
        return per_crystal[self.crystal_of][:, None]


def _cell_forces(
    batch: _Batch, deform: torch.Tensor, cells: torch.Tensor, stress: torch.Tensor
) -> torch.Tensor:
    """Generalised forces on the cell degrees of freedom ``N log F``, as ASE's
    ``FrechetCellFilter`` computes them (``ase/_4/optimize/cellutil.py``).

    ASE sums, for each of the 9 unit directions ``E``, the Fréchet derivative
    ``L(log F, E)`` of the matrix exponential times the unit-cell gradient ``G``; that is
    the adjoint ``L(log F.T, G)``, the upper-right block of ``exp([[A, G], [0, A]])`` with
    ``A = log F.T``.
    """
    import torch

    volume = torch.linalg.det(cells).abs()
    virial = -volume[:, None, None] * stress
    grad = torch.linalg.solve(deform, virial.transpose(1, 2)).transpose(1, 2)  # virial F^-T
    log_t = (batch.cell_x / batch.n[:, None, None]).transpose(1, 2)
    block = torch.zeros((len(batch), 6, 6), dtype=deform.dtype, device=deform.device)
    block[:, :3, :3] = log_t
    block[:, 3:, 3:] = log_t
    block[:, :3, 3:] = grad
    frechet = torch.linalg.matrix_exp(block)[:, :3, 3:]
    return frechet / batch.n[:, None, None]


# -- CHGNet ---------------------------------------------------------------------------------
_MODELS: dict[str, CHGNet] = {}
_MODELS_LOCK = threading.Lock()


def _load_chgnet(device: str) -> CHGNet:
    """CHGNet's default model on ``device``, loaded once per process and device.

    Isolated atoms are let through silently, as the ASE calculator atomate2 uses lets them
    through (with a printed warning), so both paths see the same energies.
    """
    with _MODELS_LOCK:
        model = _MODELS.get(device)
        if model is None:
            from chgnet.model import CHGNet

            model = CHGNet.load(verbose=False, use_device=device)
            model.graph_converter.set_isolated_atom_response("ignore")
            model.eval()
            # relaxation needs gradients for positions and strains only: no weight gradients
            model.requires_grad_(False)
            _MODELS[device] = model
        return model


def load_chgnet(device: str) -> CHGNet:
    """CHGNet's default model on ``device`` (``"cpu"``, ``"cuda"``), loaded once per process
    and kept warm: later calls and every :class:`BatchedRelaxer` on that device reuse it."""
    return _load_chgnet(device)


def clear_model_cache() -> None:
    """Forget the loaded CHGNet models (frees their memory; the next relaxation reloads)."""
    with _MODELS_LOCK:
        _MODELS.clear()


@dataclass
class ModelBatch:
    """What one CHGNet call takes: the batch's graphs and geometry, built with tensors.

    ``formulas`` name the crystals (as CHGNet's ``CrystalGraph.composition``);
    :meth:`select` gives the same inputs for some of the crystals, with freshly built
    graphs (used to find the crystal that breaks a batched call).
    """

    graphs: CrystalGraphs
    atomic_numbers: torch.Tensor  # (atoms,) int32
    frac: torch.Tensor  # (atoms, 3) float64
    cells: torch.Tensor  # (B, 3, 3) float64
    crystal_of: torch.Tensor  # (atoms,) long
    formulas: list[str]

    @property
    def n_atoms(self) -> int:
        return int(self.frac.shape[0])

    def elements_per_crystal(self) -> torch.Tensor:
        """Atoms + directed edges + angles of each crystal's graphs (what memory scales
        with)."""
        import torch

        n = len(self.formulas)
        graphs = self.graphs
        atoms = torch.bincount(self.crystal_of, minlength=n)
        edges = torch.bincount(graphs.crystal, minlength=n)
        angles = torch.bincount(self.crystal_of[graphs.angles[:, 0]], minlength=n)
        return atoms + edges + angles

    @classmethod
    def build(
        cls,
        atomic_numbers: torch.Tensor,
        frac: torch.Tensor,
        cells: torch.Tensor,
        crystal_of: torch.Tensor,
        formulas: list[str],
    ) -> ModelBatch:
        """The inputs of crystals at ``frac`` in ``cells``, with neighbour lists and graphs
        built afresh (no Verlet reuse: for one-off calls)."""
        import torch

        from matloop.relax.graphs import ATOM_CUTOFF, build_graphs, neighbour_pairs

        every = torch.arange(cells.shape[0], device=frac.device)
        i, j, image = neighbour_pairs(frac, cells, crystal_of, every, ATOM_CUTOFF)
        vec = torch.einsum("pa,pab->pb", frac[j] + image - frac[i], cells[crystal_of[i]])
        return cls(
            graphs=build_graphs(i, j, image, vec, crystal_of, len(frac)),
            atomic_numbers=atomic_numbers,
            frac=frac,
            cells=cells,
            crystal_of=crystal_of,
            formulas=formulas,
        )

    def select(self, rows: list[int]) -> ModelBatch:
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=self.frac.device)
        atom_mask = torch.isin(self.crystal_of, index)
        new_row = torch.full((len(self.formulas),), -1, dtype=torch.long,
                             device=self.frac.device)  # fmt: skip
        new_row[index] = torch.arange(len(rows), device=self.frac.device)
        return ModelBatch.build(self.atomic_numbers[atom_mask], self.frac[atom_mask],
                                self.cells[index], new_row[self.crystal_of[atom_mask]],
                                [self.formulas[r] for r in rows])  # fmt: skip


def _predict(
    model: CHGNet, batch: _Batch, cells: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str | None]]:
    """Energies per atom, forces and stresses of the batch's crystals, one batched model call.

    Returns float64 tensors on the batch's device: energies (B,), forces (atoms, 3) in eV/Å,
    stresses (B, 3, 3) in eV/Å³ (ASE's sign, symmetrised as ASE does); and per crystal None
    or why it could not be evaluated (its values are then zero). A crystal whose neighbour
    list cannot be built, or that breaks the batched call, fails alone: the others are
    evaluated without it.
    """
    import torch

    from matloop.relax.graphs import NeighbourListError, build_graphs

    device = batch.device
    n = len(batch)
    errors: list[str | None] = [None] * n
    frac = batch.frac()
    try:
        i, j, image, vec = batch.lists.update(frac, cells, batch.crystal_of)
    except NeighbourListError as exc:  # e.g. a cell so collapsed the search cannot end
        for row, reason in zip(exc.rows, exc.reasons, strict=True):
            errors[row] = reason
        broken = torch.zeros(n, dtype=torch.bool, device=device)
        broken[exc.rows] = True
        # for this last call the broken crystals become lone atoms (all at the origin of a
        # 100 Å cube: no pairs), so they cost nothing and disturb no one
        frac = torch.where(broken[batch.crystal_of][:, None], 0.0, frac)
        cube = 100.0 * torch.eye(3, dtype=cells.dtype, device=device)
        cells = torch.where(broken[:, None, None], cube, cells)
        batch.lists = type(batch.lists)(batch.lists.cutoff, batch.lists.skin)  # rebuild all
        i, j, image, vec = batch.lists.update(frac, cells, batch.crystal_of)
    inputs = ModelBatch(
        graphs=build_graphs(i, j, image, vec, batch.crystal_of, batch.n_atoms),
        atomic_numbers=batch.atomic_numbers,
        frac=frac,
        cells=cells,
        crystal_of=batch.crystal_of,
        formulas=[m.formula for m in batch.members],
    )
    sizes = inputs.elements_per_crystal()
    for member, size in zip(batch.members, sizes.tolist(), strict=True):
        member.elements = size
    rows = [b for b in range(n) if errors[b] is None]
    try:
        part = inputs if len(rows) == n else inputs.select(rows)
        batch.budget.start_measuring()
        energies, forces, stresses = _evaluate(model, part)
        batch.budget.measured(int(sizes.sum()))
        parts = [(rows, energies, forces, stresses)]
    except Exception:  # find the culprit(s): evaluate one by one
        parts = []
        for b in rows:
            try:
                parts.append(([b], *_evaluate(model, inputs.select([b]))))
            except Exception as exc:
                errors[b] = exception_reason(exc)

    f64 = {"dtype": torch.float64, "device": device}
    energy = torch.zeros(n, **f64)
    stress = torch.zeros((n, 3, 3), **f64)
    force = torch.zeros((batch.n_atoms, 3), **f64)
    for part_rows, energies, forces, stresses in parts:
        index = torch.tensor(part_rows, dtype=torch.long, device=device)
        energy[index] = energies.to(**f64)
        stress[index] = 0.5 * (stresses + stresses.transpose(1, 2)).to(**f64)
        force[torch.isin(batch.crystal_of, index)] = forces.to(**f64)
    return energy, force, stress, errors


def _evaluate(
    model: CHGNet, inputs: ModelBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CHGNet energies per atom (k,), forces (atoms, 3) in eV/Å and stresses (k, 3, 3) in
    eV/Å³ of the ``k`` crystals of ``inputs``, detached, on the model's device.

    The same numbers as ``model(graphs, task="efs")`` on CHGNet's own graphs (its forward
    pass, which the ASE calculator calls), from graphs built with tensors
    (:mod:`matloop.relax.graphs`), with forces and stress from one backward pass and no
    graph for a second derivative. Relies on CHGNet 0.4's ``BatchedGraph`` fields,
    ``CHGNet._compute`` and ``AtomRef._get_energy``; ``tests/relax/test_graphs.py`` and the
    agreement tests guard it.
    """
    import torch

    from matloop.relax.graphs import chgnet_inputs

    batched, positions, strain = chgnet_inputs(
        model, inputs.graphs, inputs.atomic_numbers, inputs.frac, inputs.cells,
        inputs.crystal_of,
    )  # fmt: skip
    prediction = model._compute(batched)  # energies only; derivatives below
    n_atoms = prediction["atoms_per_graph"]
    energy = prediction["e"]  # per atom for CHGNet (intensive), total otherwise
    total = energy * n_atoms if model.is_intensive else energy
    grad_x, grad_strain = torch.autograd.grad(total.sum(), [positions, strain])
    per_atom = energy.detach() + _composition_energy(model, inputs)
    if not model.is_intensive:
        per_atom = per_atom / n_atoms
    stresses = grad_strain / batched.volumes[:, None, None]
    return per_atom, -grad_x.detach(), stresses.detach()


def _composition_energy(model: CHGNet, inputs: ModelBatch) -> torch.Tensor | float:
    """CHGNet's composition model (``AtomRef``) on the batch's crystals."""
    import torch

    ref = model.composition_model
    if ref is None:
        return 0.0
    n = len(inputs.formulas)
    counts = torch.zeros((n, ref.max_num_elements), dtype=torch.float32,
                         device=inputs.frac.device)  # fmt: skip
    z = inputs.atomic_numbers.long() - 1
    counts.index_put_((inputs.crystal_of, z), torch.ones_like(z, dtype=torch.float32),
                      accumulate=True)  # fmt: skip
    if ref.is_intensive:
        counts = counts / counts.sum(dim=1, keepdim=True)
    with torch.no_grad():
        return ref._get_energy(counts)
