"""One Relaxer interface: build_relaxer picks the back-end from a campaign's relaxer
settings, every back-end has ``potential`` and ``relax(items)``, and the shared checks
refuse and judge the same way for all of them."""

from __future__ import annotations

import numpy as np
import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore
from pymatgen.core import Lattice, Structure

from matloop.config import ChemicalSpaceConfig, RelaxerConfig
from matloop.relax.checks import RelaxChecks, TaskResult, judge
from matloop.relax.outcome import RelaxOutcome
from matloop.relax.relaxer import (
    RELAXERS,
    MakerRelaxer,
    Relaxer,
    ReplayRelaxer,
    build_relaxer,
    relaxer_kind,
)
from matloop.relax.replay import ReplayOracle

NACL = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def job_store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


def test_the_config_chooses_the_relaxer():
    space = ChemicalSpaceConfig(elements=["Na", "Cl"], max_atoms=6)
    maker = build_relaxer(RelaxerConfig(), space, job_store())
    assert isinstance(maker, MakerRelaxer) and maker.claim_size == 1
    assert maker.executor.name == "local" and maker.executor.max_atoms == 6
    assert maker.potential == "CHGNet 0.3.0"
    batched = build_relaxer(RelaxerConfig(batched=True, batch_size=5), space, job_store())
    assert type(batched).__name__ == "BatchedRelaxer"
    assert batched.claim_size == 5 and batched.max_atoms == 6
    assert batched.potential == maker.potential  # the same energies, the same label
    for relaxer in (maker, batched):
        assert isinstance(relaxer, Relaxer)
    assert [relaxer_kind(RelaxerConfig(**kw)) for kw in ({}, {"batched": True})] == [
        "maker", "batched"]
    with pytest.raises(ValueError, match="unknown relaxer 'nope'"):
        build_relaxer(type("Settings", (), {"kind": "nope"})())
    assert set(RELAXERS) >= {"maker", "batched", "replay"}


def test_replay_relaxer_answers_from_its_table():
    oracle = ReplayOracle(["a"], [NACL], {"heat": [-2.1], "gap": [5.0]}, name="toy")
    relaxer = ReplayRelaxer(oracle, "heat")
    assert isinstance(relaxer, Relaxer) and relaxer.potential == "replay:toy"
    li = Structure(Lattice.cubic(4.0), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    found, missing = relaxer.relax([("x", NACL.copy()), ("y", li)])
    assert found.ok and found.energy_per_atom == -2.1 and found.properties == {"gap": 5.0}
    assert not missing.ok and missing.reason == "not in the replay table"


def test_checks_refuse_and_judge_with_one_set_of_reasons():
    checks = RelaxChecks(max_atoms=1)
    assert checks.precheck(NACL) == "too many atoms (2 > 1)"
    crowded = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    assert RelaxChecks().precheck(crowded).startswith("atoms too close (0.10 Å")
    grown = NACL.copy()
    grown.scale_lattice(NACL.volume * 4)
    result = TaskResult(structure=grown, energy_per_atom=-3.0, n_steps=5, max_force=0.01,
                        converged=True)
    assert judge(result, NACL, "uuid", 3.0)["reason"] == "cell exploded: volume grew 4.0x"
    slow = TaskResult(structure=NACL, energy_per_atom=-3.0, n_steps=302, max_force=0.31,
                      converged=False, stress_gpa=0.52, max_steps=300)
    fields = judge(slow, NACL, None, 3.0)
    assert fields["reason"] == ("not converged after 300 steps: max force 0.31 eV/Å, "
                                "max stress 0.52 GPa")
    nan = TaskResult(structure=NACL, energy_per_atom=float(np.nan), n_steps=1, max_force=0.0,
                     converged=True)
    assert judge(nan, NACL, None, 3.0)["reason"] == "energy is NaN"
    ok = RelaxOutcome(candidate_id="c", potential="p", wall_s=0.0,
                      **judge(TaskResult(NACL, -3.0, 4, 0.01, True), NACL, "u", 3.0))
    assert ok.ok and ok.reason is None and ok.job_uuid == "u"
