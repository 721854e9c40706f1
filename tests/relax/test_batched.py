"""Tests for matloop.relax.batched: many crystals relaxed together with CHGNet.

The batched path must give what the per-structure atomate2 path gives (same relaxed
structures, energies within 5 meV/atom) on real crystals, keep each failure to its own
crystal, and run a campaign round when the config asks for it. CHGNet runs on one thread.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matloop.config import ConfigError, parse_config
from matloop.relax import batched
from matloop.relax.batched import BatchedRelaxer

#: Agreement the issue asks for between the two paths.
MAX_DE_MEV_PER_ATOM = 5.0


def _rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


@pytest.fixture
def mp_crystals(shared_data: Path) -> list[tuple[str, Structure]]:
    """Eight real crystals of at most 8 sites (a seeded sample of the MP table); every other
    one strained by a few per cent so that its cell has to relax too."""
    import pandas as pd

    path = shared_data / "known_crystals_mp.csv.gz"
    frame = pd.read_csv(path, usecols=["material_id", "nsites", "cif"])
    rows = frame[frame["nsites"] <= 8].sort_values("material_id").sample(8, random_state=7)
    crystals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (mid, cif) in enumerate(zip(rows["material_id"], rows["cif"], strict=True)):
            structure = Structure.from_str(cif, fmt="cif")
            if i % 2:
                structure.apply_strain([0.04, -0.03, 0.05])
            crystals.append((str(mid), structure))
    return crystals


# small models and cells: one torch thread is fastest, and spares the other core
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- agreement with the per-structure path --------------------------------------------------
@pytest.mark.slow
def test_same_structures_and_energies_as_atomate2_per_structure(mp_crystals) -> None:
    from jobflow import JobStore
    from maggma.stores import MemoryStore
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from matloop.relax.makers import make_relax_maker
    from matloop.relax.runner import relax_structures

    seen: list[tuple[int, int]] = []
    # batch_size 3 < 8 crystals: finished crystals leave, waiting ones take their place
    together = BatchedRelaxer(batch_size=3).relax(
        mp_crystals, max_atoms=8, progress=lambda *a: seen.append(a)
    )
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    alone = relax_structures(mp_crystals, make_relax_maker("CHGNet"), store, max_atoms=8)

    assert [o.candidate_id for o in together] == [cid for cid, _ in mp_crystals]
    assert seen == [(i, 8) for i in range(1, 9)]
    matcher = StructureMatcher()
    strained_volume_changed = 0
    for (cid, start), ours, theirs in zip(mp_crystals, together, alone, strict=True):
        assert theirs.ok, (cid, theirs.reason)
        assert ours.ok, (cid, ours.reason)
        assert ours.potential == theirs.potential == "CHGNet 0.3.0"
        assert ours.job_uuid is None and ours.converged and ours.max_force < 0.05
        de = abs(ours.energy_per_atom - theirs.energy_per_atom) * 1000
        assert de < MAX_DE_MEV_PER_ATOM, (cid, de)
        assert matcher.fit(ours.structure, theirs.structure), cid
        assert ours.structure.volume == pytest.approx(theirs.structure.volume, rel=0.01)
        strained_volume_changed += abs(ours.structure.volume / start.volume - 1) > 0.02
    assert strained_volume_changed >= 3  # the strained cells did relax
    # each crystal's share of the batch time adds up to about the call's time
    assert all(o.wall_s > 0 for o in together)


@pytest.mark.slow
def test_fixed_cell_agrees_too(mp_crystals) -> None:
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    from matloop.relax.makers import make_relax_maker
    from matloop.relax.runner import relax_structures

    rng = np.random.default_rng(3)
    items = []
    for cid, structure in mp_crystals[:2]:  # rattled, so that the atoms have to move
        rattled = structure.copy()
        for i in range(len(rattled)):
            rattled.translate_sites([i], rng.normal(0, 0.05, 3), frac_coords=False)
        items.append((cid, rattled))
    together = BatchedRelaxer(relax_cell=False).relax(items)
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    alone = relax_structures(items, make_relax_maker("CHGNet", relax_cell=False), store)
    for (_, start), ours, theirs in zip(items, together, alone, strict=True):
        assert ours.ok and theirs.ok
        assert ours.n_steps > 3  # it did relax
        assert ours.structure.lattice == start.lattice  # the cell stayed as it was
        de = abs(ours.energy_per_atom - theirs.energy_per_atom) * 1000
        assert de < MAX_DE_MEV_PER_ATOM


# -- failures stay with their crystal ---------------------------------------------------------
@pytest.mark.slow
def test_failures_in_one_batch_leave_the_others_alone(mp_crystals, monkeypatch) -> None:
    real_evaluate = batched._evaluate

    def nan_for_nacl(model, inputs):
        """CHGNet's answers, except a NaN energy for rock salt."""
        energies, forces, stresses = real_evaluate(model, inputs)
        energies = energies.clone()
        for i, formula in enumerate(inputs.formulas):
            if formula == "Na1 Cl1":
                energies[i] = float("nan")
        return energies, forces, stresses

    monkeypatch.setattr(batched, "_evaluate", nan_for_nacl)
    good = [mp_crystals[0], mp_crystals[2]]  # unstrained: their volumes barely change
    copper = Structure(Lattice.cubic(3.61 * 0.85), ["Cu"] * 4,
                       [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])  # fmt: skip
    items = [
        good[0],
        ("nan", _rocksalt()),
        ("squeezed", copper),  # expands past max_volume_ratio
        ("too-big", _rocksalt() * (2, 2, 2)),
        ("overlap", Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.025, 0, 0]])),
        good[1],
    ]
    outs = BatchedRelaxer(batch_size=8).relax(items, max_atoms=8, max_volume_ratio=1.3)
    by_id = {o.candidate_id: o for o in outs}

    assert by_id["nan"].reason == "energy is NaN"
    assert by_id["nan"].energy_per_atom is None and by_id["nan"].structure is not None
    # stopped in the step its volume left the window (FIRE moves the cell in jumps)
    assert by_id["squeezed"].reason.startswith("cell exploded: volume grew 1.")
    assert by_id["squeezed"].structure.volume > 1.3 * copper.volume
    assert by_id["too-big"].reason == "too many atoms (16 > 8)"
    assert by_id["overlap"].reason == "atoms too close (0.10 Å < 0.5 Å)"
    for cid, _ in good:
        assert by_id[cid].ok, by_id[cid].reason

    # the good crystals relax exactly as they do without the bad company
    monkeypatch.setattr(batched, "_evaluate", real_evaluate)
    alone = BatchedRelaxer().relax(good)
    for out in alone:
        assert by_id[out.candidate_id].energy_per_atom == pytest.approx(
            out.energy_per_atom, abs=1e-5
        )
        assert by_id[out.candidate_id].n_steps == out.n_steps


@pytest.mark.slow
def test_a_crystal_that_breaks_the_model_call_fails_alone(mp_crystals, monkeypatch) -> None:
    real_evaluate = batched._evaluate

    def fails_on_nacl(model, inputs):
        if "Na1 Cl1" in inputs.formulas:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_evaluate(model, inputs)

    monkeypatch.setattr(batched, "_evaluate", fails_on_nacl)
    items = [mp_crystals[0], ("nacl", _rocksalt())]
    good, bad = BatchedRelaxer().relax(items)
    assert good.ok, good.reason
    assert not bad.ok and bad.structure is None
    assert bad.reason == "RuntimeError: CUDA error: an illegal memory access was encountered"


@pytest.mark.slow
def test_not_converged_keeps_its_energy_and_a_relaxed_crystal_stops_at_once(
    mp_crystals,
) -> None:
    cid, strained = mp_crystals[1]
    (first,) = BatchedRelaxer().relax([(cid, strained)])
    assert first.ok and first.n_steps > 4
    relaxed = first.structure

    slow, done = BatchedRelaxer(steps=2).relax([("strained", strained), ("relaxed", relaxed)])
    assert not slow.ok and not slow.converged
    assert slow.reason.startswith("not converged after 2 steps: max force ")
    assert " eV/Å, max stress " in slow.reason and slow.reason.endswith(" GPa")
    assert slow.energy_per_atom is not None and slow.structure is not None
    assert slow.n_steps == 4  # two steps plus the initial and final frames, as atomate2
    assert done.ok and done.n_steps == 2  # converged before its first step


@pytest.mark.slow
def test_batches_respect_their_size_limits(mp_crystals, monkeypatch) -> None:
    real_evaluate = batched._evaluate
    sizes: list[tuple[int, int]] = []  # (crystals, atoms) of each model call

    def spy(model, inputs):
        sizes.append((len(inputs.formulas), inputs.n_atoms))
        return real_evaluate(model, inputs)

    monkeypatch.setattr(batched, "_evaluate", spy)
    biggest = max(len(s) for _, s in mp_crystals)
    outs = BatchedRelaxer(steps=3, batch_size=3, max_batch_atoms=biggest).relax(mp_crystals)
    assert len(outs) == 8 and all(o.energy_per_atom is not None for o in outs)
    assert max(n for n, _ in sizes) <= 3
    assert max(atoms for _, atoms in sizes) <= biggest


def test_crystals_are_drawn_as_the_batch_has_room(mp_crystals) -> None:
    """relax_from (how a Dask worker pulls from the round's queue) asks for crystals only
    when slots open, and gives each crystal taken one outcome."""
    pool, asked, outcomes = list(mp_crystals), [], {}

    def take(n: int):
        asked.append(n)
        drawn, pool[:n] = pool[:n], []
        return drawn

    taken = BatchedRelaxer(steps=3, batch_size=3).relax_from(take, outcomes.__setitem__)
    assert taken == len(mp_crystals) and sorted(outcomes) == list(range(taken))
    assert [o.candidate_id for _, o in sorted(outcomes.items())] == [c for c, _ in mp_crystals]
    assert asked[0] == 3 and max(asked) == 3  # never more than the batch has room for
    assert len(asked) >= len(mp_crystals) // 3 + 1  # drawn over the run, then one empty draw


def test_empty_and_all_rejected_inputs_need_no_model(monkeypatch) -> None:
    def no_model(device):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(batched, "_load_chgnet", no_model)
    assert BatchedRelaxer().relax([]) == []
    (out,) = BatchedRelaxer().relax([("big", _rocksalt() * (2, 2, 2))], max_atoms=4)
    assert out.reason == "too many atoms (16 > 4)" and out.potential == "CHGNet 0.3.0"


def test_potential_named_as_the_per_structure_path() -> None:
    from matloop.relax.makers import potential_version

    model = batched._load_chgnet("cpu")
    assert BatchedRelaxer().potential == potential_version("CHGNet") == "CHGNet 0.3.0"
    assert BatchedRelaxer(model=model).potential == potential_version("CHGNet", {"model": model})


def test_cell_forces_match_ase_frechet_filter() -> None:
    """The batched cell forces equal ASE's FrechetCellFilter ones for a deformed cell."""
    import torch
    from ase.calculators.calculator import Calculator, all_changes
    from ase.filters import FrechetCellFilter
    from pymatgen.io.ase import AseAtomsAdaptor

    stress = np.array([0.03, -0.01, 0.02, 0.004, -0.002, 0.005])  # eV/Å³, Voigt

    class FixedStress(Calculator):
        implemented_properties = ("energy", "forces", "stress")

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": 0.0, "forces": np.zeros((len(atoms), 3)),
                            "stress": stress}  # fmt: skip

    start = _rocksalt()
    atoms = AseAtomsAdaptor.get_atoms(start)
    atoms.calc = FixedStress()
    ase_filter = FrechetCellFilter(atoms)
    log_f = np.array([[0.02, 0.01, 0.0], [-0.01, 0.03, 0.005], [0.0, 0.02, -0.01]])
    n = len(atoms)
    x = ase_filter.get_positions()
    # ASE's cell coordinates are N log(N F): ours (N log F) shifted by N log N, a constant
    x[n:] = n * (log_f + np.log(n) * np.eye(3))
    ase_filter.set_positions(x)
    expected = ase_filter.get_forces()[n:]

    batch = batched._Batch(torch.device("cpu"))
    batch.add(0, start, 0.0)
    batch.cell_x = torch.tensor(log_f * len(start), dtype=torch.float64)[None]
    deform = batch.deformation()
    cells, _ = batch.cells_and_positions(deform)
    assert np.allclose(cells[0].numpy(), atoms.cell[:], atol=1e-10)
    full = torch.tensor(
        [[stress[0], stress[5], stress[4]], [stress[5], stress[1], stress[3]],
         [stress[4], stress[3], stress[2]]], dtype=torch.float64,
    )[None]  # fmt: skip
    ours = batched._cell_forces(batch, deform, cells, full)[0].numpy()
    assert np.allclose(ours, expected, atol=1e-10)


@pytest.mark.slow
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA device")
def test_cuda_agrees_with_cpu(mp_crystals) -> None:
    items = mp_crystals[:4]
    on_cpu = BatchedRelaxer(device="cpu").relax(items)
    on_gpu = BatchedRelaxer(device="cuda").relax(items)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert a.ok and b.ok
        assert abs(a.energy_per_atom - b.energy_per_atom) * 1000 < MAX_DE_MEV_PER_ATOM


# -- configuration and campaigns --------------------------------------------------------------
def _config(relaxer: dict, name: str = "batched") -> dict:
    return {"name": name, "chemical_space": {"elements": ["Na", "Cl"]}, "relaxer": relaxer}


@pytest.mark.parametrize(
    ("relaxer", "message"),
    [
        ({"batched": True, "potential": "SevenNet"},
         "relaxer: batched: true relaxes with CHGNet only, not potential: SevenNet"),
        ({"batched": True, "executor": "jobflow-remote"},
         "relaxer: batched: true runs in this process; in chunks on executor: dask or "
         "fireworks; jobflow-remote runs one job per crystal"),
        ({"batched": True, "batch_size": 0}, "relaxer.batch_size"),
    ],
)  # fmt: skip
def test_config_refuses_what_batched_cannot_do(relaxer: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(_config(relaxer))


def test_switching_to_batched_keeps_the_campaign() -> None:
    """Batched and per-structure relaxations agree, so a stored campaign may switch."""
    from matloop.loop import CampaignRun
    from matloop.store import MatloopStore

    store = MatloopStore("memory://")
    CampaignRun(parse_config(_config({})), store=store).ensure_campaign()
    switched = CampaignRun(parse_config(_config({"batched": True, "batch_size": 4})), store=store)
    switched.ensure_campaign()  # no CampaignMismatchError
    assert switched.potential == "CHGNet 0.3.0"
    assert switched.relaxer.batch_size == 4


def test_a_campaign_stored_before_new_relaxer_fields_resumes() -> None:
    """Fields added to the relaxer settings later (replay, batched, ...) take their defaults
    when a stored campaign is compared; a real change of potential is still refused."""
    from matloop.loop import CampaignMismatchError, CampaignRun
    from matloop.store import MatloopStore

    store = MatloopStore("memory://")
    CampaignRun(parse_config(_config({})), store=store).ensure_campaign()
    doc = store.get_campaign("batched")
    for newer in ("replay", "batched", "batch_size"):
        doc.config["relaxer"].pop(newer)
    store.save_campaign(doc)
    CampaignRun(parse_config(_config({})), store=store).ensure_campaign()  # resumes
    with pytest.raises(CampaignMismatchError, match="different relaxer"):
        CampaignRun(parse_config(_config({"potential": "SevenNet"})), store=store).ensure_campaign()


@pytest.mark.slow
def test_a_round_relaxes_its_candidates_in_a_batch() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from handmade_campaign import NAME, build_campaign

    from matloop.loop import CampaignRun

    base = build_campaign(evaluate_round_2=True)
    relaxer = base.config.relaxer.model_copy(update={"batched": True, "batch_size": 4})
    config = base.config.model_copy(update={"relaxer": relaxer})
    run = CampaignRun(config, store=base.store)
    run.ensure_campaign()
    doc = run.run_round()

    assert doc.round == 3 and doc.status == "completed"
    assert doc.metrics["relaxed"] + doc.metrics["failed"] == doc.metrics["selected"] == 3
    assert doc.metrics["relaxed"] >= 1
    relaxations = [r for r in run.store.relaxations(NAME) if r.round == 3]
    assert len(relaxations) == 3
    for relax in relaxations:
        assert relax.job_uuid is None  # no atomate2 job: the batched path ran
        assert relax.potential == "CHGNet 0.3.0"
        assert relax.ok or relax.reason
    assert run.context._maker is None  # the per-structure maker was never built
    assert doc.metrics["evaluated"] == doc.metrics["relaxed"]
