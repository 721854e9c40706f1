"""Tests for matloop.relax.runner.relax_structures and RelaxOutcome.

Fast tests drive the runner with ASE's EMT potential through the same cached force-field
maker; the slow ones use CHGNet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from jobflow import Flow, JobStore, Maker, job
from maggma.stores import MemoryStore
from pymatgen.core import Lattice, Structure

from matloop.relax.makers import CachedForceFieldRelaxMaker, make_relax_maker
from matloop.relax.runner import RelaxOutcome, relax_structures

EMT = {"@module": "ase.calculators.emt", "@callable": "EMT"}


def emt_maker(**kwargs) -> CachedForceFieldRelaxMaker:
    relax_kwargs = {"fmax": 0.05, "final_atoms_object_file": None}
    relax_kwargs.update(kwargs.pop("relax_kwargs", {}))
    return CachedForceFieldRelaxMaker(
        force_field_name=EMT, relax_kwargs=relax_kwargs, ionic_step_data=None, **kwargs
    )


def fcc(symbol: str, a: float) -> Structure:
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [symbol], [[0, 0, 0]])


@pytest.fixture
def job_store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


def test_good_structure_relaxes_and_task_doc_is_stored(job_store: JobStore) -> None:
    seen: list[tuple[int, int]] = []
    (out,) = relax_structures(
        [("cu-1", fcc("Cu", 3.75))], emt_maker(), job_store, progress=lambda *a: seen.append(a)
    )
    assert out.ok and out.converged and out.reason is None
    assert out.candidate_id == "cu-1"
    assert out.potential == "ase.calculators.emt.EMT"
    assert out.structure.lattice.a * 2**0.5 == pytest.approx(3.59, abs=0.02)  # EMT Cu
    assert out.max_force is not None and out.max_force < 0.05
    assert out.n_steps >= 2 and out.wall_s > 0
    assert seen == [(1, 1)]

    doc = job_store.query_one({"uuid": out.job_uuid})
    assert doc["metadata"]["candidate_id"] == "cu-1"
    assert doc["output"]["@class"] == "ForceFieldTaskDocument"
    assert doc["output"]["output"]["energy_per_atom"] == pytest.approx(out.energy_per_atom)


def test_failures_get_reasons_and_do_not_stop_others(job_store: JobStore) -> None:
    crowded = Structure(Lattice.cubic(3.6), ["Cu"] * 2, [[0, 0, 0], [0.5, 0.5, 0]]) * (1, 1, 5)
    items = [
        ("si", Structure(Lattice.cubic(5.4), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])),
        ("close", Structure(Lattice.cubic(4.0), ["Cu", "Cu"], [[0, 0, 0], [0.025, 0, 0]])),
        ("sparse", Structure(Lattice.cubic(1000.0), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])),
        ("crowded", crowded),
        ("good", fcc("Cu", 3.7)),
    ]
    seen: list[tuple[int, int]] = []
    outs = relax_structures(
        items, emt_maker(), job_store, max_atoms=8, progress=lambda *a: seen.append(a)
    )
    by_id = {o.candidate_id: o for o in outs}
    assert [o.candidate_id for o in outs] == [cid for cid, _ in items]
    assert seen == [(i, 5) for i in range(1, 6)]
    assert by_id["si"].reason == "NotImplementedError: No EMT-potential for Si"
    assert by_id["close"].reason == "atoms too close (0.10 Å < 0.5 Å)"
    assert by_id["sparse"].reason.startswith("cell too sparse (5e+08 Å³/atom > 200)")
    assert by_id["crowded"].reason == "too many atoms (10 > 8)"
    assert all(not by_id[k].ok and by_id[k].structure is None for k in by_id if k != "good")
    assert by_id["good"].ok


def test_exploded_cell_is_a_failure(job_store: JobStore) -> None:
    (out,) = relax_structures(
        [("squeezed", fcc("Cu", 3.2))], emt_maker(), job_store, max_volume_ratio=1.2
    )
    assert not out.ok
    assert out.reason == "cell exploded: volume grew 1.4x"
    assert out.structure is not None and out.energy_per_atom is not None


def test_not_converged_is_a_failure_that_keeps_its_energy(job_store: JobStore) -> None:
    (out,) = relax_structures([("slow", fcc("Cu", 3.9))], emt_maker(steps=3), job_store)
    assert not out.ok and not out.converged
    assert out.reason.startswith("not converged after 3 steps: max force 0.00 eV/Å, max stress")
    assert out.energy_per_atom is not None and out.structure is not None
    assert out.n_steps == 5  # atomate2 records the initial and final frames too


@job
def _boom(structure: Structure) -> None:
    raise RuntimeError(f"no luck with {structure.formula}\n on two lines")


class BoomMaker(Maker):
    name: str = "boom"

    def make(self, structure: Structure):
        return _boom(structure)


def test_exception_text_becomes_the_reason(job_store: JobStore) -> None:
    (out,) = relax_structures([("x", fcc("Cu", 3.6))], BoomMaker(), job_store)
    assert not out.ok
    assert out.reason == "RuntimeError: no luck with Cu1 on two lines"
    assert out.job_uuid is not None
    assert out.potential == "BoomMaker"


def test_outcome_json_round_trip(job_store: JobStore) -> None:
    (out,) = relax_structures([("cu", fcc("Cu", 3.6))], emt_maker(), job_store)
    data = out.model_dump(mode="json")
    assert data["structure"]["@class"] == "Structure"
    back = RelaxOutcome.model_validate(data)
    assert back.structure == out.structure
    assert back.energy_per_atom == out.energy_per_atom
    assert RelaxOutcome.model_validate_json(out.model_dump_json()).candidate_id == "cu"


@pytest.mark.slow
def test_chgnet_relaxes_strained_si_and_rejects_overlap(job_store: JobStore) -> None:
    h = 5.47 * 1.04 / 2
    si = Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Si", "Si"], [[0, 0, 0], [0.26, 0.25, 0.25]]
    )
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.025, 0, 0]])
    outs = relax_structures(
        [("si", si), ("overlap", overlap)], make_relax_maker("CHGNet"), job_store, num_threads=1
    )
    good, bad = outs
    assert good.ok, good.reason
    assert good.potential == "CHGNet 0.3.0"
    assert good.structure.lattice.a * 2**0.5 == pytest.approx(5.47, rel=0.02)
    assert good.energy_per_atom == pytest.approx(-5.31, abs=0.1)
    assert not bad.ok and bad.reason.startswith("atoms too close")

    doc = job_store.query_one({"uuid": good.job_uuid})
    assert doc["output"]["forcefield_name"] == "MLFF.CHGNet"
    assert doc["output"]["output"]["energy_per_atom"] == pytest.approx(good.energy_per_atom)
    assert doc["output"]["objects"] == {}  # no trajectory stored by default


class _NaNCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {
            "energy": float("nan"),
            "free_energy": float("nan"),
            "forces": np.zeros((n, 3)),
            "stress": np.zeros(6),
        }


@dataclass
class NaNMaker(CachedForceFieldRelaxMaker):
    def _get_calculator(self) -> Calculator:
        return _NaNCalculator()


def test_nan_energy_is_a_failure(job_store: JobStore) -> None:
    maker = NaNMaker(force_field_name=EMT, relax_kwargs={"final_atoms_object_file": None})
    (out,) = relax_structures([("nan", fcc("Cu", 3.6))], maker, job_store)
    assert not out.ok
    assert out.reason == "energy is NaN"
    assert out.energy_per_atom is None


@dataclass
class ChainMaker(Maker):
    """A flow of one relaxation, like a maker chaining an ML pre-relax and DFT."""

    name: str = "chain"
    inner: Maker = field(default_factory=emt_maker)

    def make(self, structure: Structure) -> Flow:
        relax = self.inner.make(structure)
        return Flow([relax], output=relax.output, name=self.name)


def test_flow_makers_are_read_from_the_store(job_store: JobStore) -> None:
    (out,) = relax_structures([("cu", fcc("Cu", 3.7))], ChainMaker(), job_store)
    assert out.ok, out.reason
    assert out.structure.lattice.a * 2**0.5 == pytest.approx(3.59, abs=0.02)
    assert job_store.query_one({"uuid": out.job_uuid})["metadata"]["candidate_id"] == "cu"
