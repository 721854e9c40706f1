"""Tests for matloop.relax.executors with ASE's EMT potential (fast, no model to load).

Dask runs on a real local ``distributed`` cluster (two worker processes); FireWorks runs on a
file-backed mongomock LaunchPad with real ``rlaunch`` worker processes; jobflow-remote, which
is not installed here, is exercised through its one seam (``jobflow_remote.submit_flow``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore
from pymatgen.core import Lattice, Structure

from matloop.relax.executors import (
    DaskExecutor,
    FireWorksExecutor,
    JobflowRemoteExecutor,
    LocalExecutor,
    build_relax_flow,
    make_executor,
)
from matloop.relax.makers import CachedForceFieldRelaxMaker
from matloop.relax.runner import relax_structures

EMT = {"@module": "ase.calculators.emt", "@callable": "EMT"}


def emt_maker() -> CachedForceFieldRelaxMaker:
    return CachedForceFieldRelaxMaker(
        force_field_name=EMT, relax_kwargs={"fmax": 0.05, "final_atoms_object_file": None},
        ionic_step_data=None, store_trajectory="no",
    )


def fcc(symbol: str, a: float) -> Structure:
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [symbol], [[0, 0, 0]])


def items() -> list[tuple[str, Structure]]:
    overlapping = Structure(Lattice.cubic(3.6), ["Cu", "Cu"], [[0, 0, 0], [0.01, 0, 0]])
    return [("cu", fcc("Cu", 3.75)), ("al", fcc("Al", 4.1)), ("bad", overlapping),
            ("ag", fcc("Ag", 4.2))]


@pytest.fixture
def job_store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


def test_make_executor_names_and_errors() -> None:
    assert isinstance(make_executor(), LocalExecutor)
    assert make_executor("dask", n_workers=3).n_workers == 3
    with pytest.raises(ValueError, match="unknown executor 'slurm'; known executors: local"):
        make_executor("slurm")
    with pytest.raises(ValueError, match="bad settings for the fireworks executor"):
        make_executor("fireworks", worker_count=2)


def test_local_executor_is_the_runner(job_store: JobStore) -> None:
    outs = LocalExecutor().run(items(), emt_maker(), job_store)
    direct = relax_structures(items(), emt_maker(), JobStore(MemoryStore(), additional_stores={
        "data": MemoryStore()}))
    assert [o.candidate_id for o in outs] == ["cu", "al", "bad", "ag"]
    assert [o.ok for o in outs] == [o.ok for o in direct] == [True, True, False, True]
    assert outs[2].reason.startswith("atoms too close")
    for a, b in zip(outs, direct, strict=True):
        if a.ok:
            assert a.energy_per_atom == pytest.approx(b.energy_per_atom, abs=1e-6)


def test_remote_executors_refuse_an_in_memory_job_store(job_store: JobStore) -> None:
    with pytest.raises(ValueError, match="in-memory job store"):
        FireWorksExecutor().run(items(), emt_maker(), job_store)


def test_relax_flow_prechecks_and_tags_jobs() -> None:
    flow, uuids, refused = build_relax_flow(items(), emt_maker())
    assert set(uuids) == {"cu", "al", "ag"} and set(refused) == {"bad"}
    assert [j.metadata["candidate_id"] for j in flow.jobs] == ["cu", "al", "ag"]


def test_jobflow_remote_submits_the_flow(monkeypatch, job_store: JobStore) -> None:
    calls = {}

    def submit_flow(flow, worker=None, project=None, resources=None, exec_config=None):
        calls.update(flow=flow, worker=worker, project=project, resources=resources)
        return [1, 2, 3]

    monkeypatch.setitem(sys.modules, "jobflow_remote",
                        types.SimpleNamespace(submit_flow=submit_flow))
    executor = JobflowRemoteExecutor(project="matloop", worker="slurm",
                                     resources={"nodes": 1}, wait=False)
    outs = executor.run(items(), emt_maker(), job_store)
    assert calls["worker"] == "slurm" and calls["project"] == "matloop"
    assert len(calls["flow"].jobs) == 3
    assert [o.reason for o in outs] == ["submitted", "submitted", outs[2].reason, "submitted"]
    assert outs[2].reason.startswith("atoms too close") and not any(o.ok for o in outs)


def test_jobflow_remote_missing_is_a_clear_error(monkeypatch, job_store: JobStore) -> None:
    monkeypatch.setitem(sys.modules, "jobflow_remote", None)
    with pytest.raises(ImportError, match="pip install jobflow-remote"):
        JobflowRemoteExecutor().run(items(), emt_maker(), job_store)


@pytest.mark.slow
def test_dask_local_cluster_matches_local(job_store: JobStore) -> None:
    executor = DaskExecutor(n_workers=2)
    try:
        outs = executor.run(items(), emt_maker(), job_store)
        assert len(executor.client().scheduler_info()["workers"]) == 2
    finally:
        executor.close()
    local = LocalExecutor().run(
        items(), emt_maker(), JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    )
    assert [o.candidate_id for o in outs] == ["cu", "al", "bad", "ag"]
    assert [o.ok for o in outs] == [True, True, False, True]
    for a, b in zip(outs, local, strict=True):
        if a.ok:
            assert a.energy_per_atom == pytest.approx(b.energy_per_atom, abs=1e-6)
            # the task document came back from the worker into this process's store
            doc = job_store.query_one({"uuid": a.job_uuid})
            assert doc["metadata"]["candidate_id"] == a.candidate_id


FIREWORKS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from jobflow import JobStore
    from maggma.stores import MontyStore
    from fireworks import LaunchPad
    sys.path.insert(0, {tests!r})
    from test_executors import emt_maker, fcc, items
    from matloop.relax.executors import FireWorksExecutor

    def store(name):
        return MontyStore(name, database_path={db!r}, database_name="matloop",
                          storage="sqlite", key="uuid" if name == "jobs" else "blob_uuid")
    job_store = JobStore(store("jobs"), additional_stores={{"data": store("jobs_data")}})
    job_store.connect()
    lpad = LaunchPad(host="localhost", name="fw_test")  # mongomock: see the env
    lpad.reset("", require_password=False)
    executor = FireWorksExecutor(launchpad=lpad, n_workers=2, worker_dir={work!r},
                                 worker_env={{"MONGOMOCK_SERVERSTORE_FILE": {lp!r}}},
                                 timeout_s=300)
    # EMT knows no silicon: that job fizzles on its worker, the others complete
    todo = items() + [("si", fcc("Si", 5.4))]
    outs = executor.run(todo, emt_maker(), job_store)
    lpad = LaunchPad.from_dict(lpad.to_dict())  # mongomock: read what the workers wrote
    states = sorted(fw["state"] for fw in lpad.fireworks.find({{}}))
    print(json.dumps({{"outs": [o.model_dump(mode="json", exclude={{"structure"}})
                                for o in outs], "states": states}}))
    """
)


@pytest.mark.slow
def test_fireworks_rlaunch_workers_on_a_mongomock_launchpad(tmp_path: Path) -> None:
    tests = str(Path(__file__).parent)
    script = FIREWORKS_SCRIPT.format(tests=tests, db=str(tmp_path / "db"),
                                     work=str(tmp_path / "work"), lp=str(tmp_path / "lp.json"))
    (tmp_path / "lp.json").write_text("{}")  # mongomock-persistence reads it on start
    env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(tmp_path / "lp.json")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outs = {o["candidate_id"]: o for o in result["outs"]}
    assert [o["candidate_id"] for o in result["outs"]] == ["cu", "al", "bad", "ag", "si"]
    assert outs["cu"]["ok"] and outs["al"]["ok"] and outs["ag"]["ok"]
    assert outs["bad"]["reason"].startswith("atoms too close")  # never submitted
    assert "fizzled" in outs["si"]["reason"] and not outs["si"]["ok"]
    assert result["states"] == ["COMPLETED", "COMPLETED", "COMPLETED", "FIZZLED"]
    # two rlaunch workers ran, each in its own folder
    assert {p.name for p in (tmp_path / "work").iterdir()} >= {"worker-0", "worker-1"}
