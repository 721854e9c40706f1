"""Several workers on one store: no candidate is relaxed twice, a dead worker's claim is
taken over, and the round's relax step finishes only when every claim is settled.

Real processes, a real SQLite store on disk (the embedded default), real CHGNet relaxations (no Prefect)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from matloop.config import parse_config
from matloop.loop import CampaignRun
from matloop.store import CandidateStatus

pytestmark = pytest.mark.slow

# A worker: open the store from the config, wait for the start signal, relax round 1.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from matloop.config import parse_config
    from matloop.loop import CampaignRun

    config_file, ready, go = sys.argv[1:4]
    run = CampaignRun(parse_config(json.loads(Path(config_file).read_text())))
    run.maker  # build the relax maker before the race starts
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.05)
    result = run.relax(1)
    print(json.dumps({"worker": run.store.worker_id(), "counts": result.counts}))
""")

# A worker that claims one candidate and dies before relaxing it (kill -9 mid-relaxation).
CRASHER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from matloop.config import parse_config
    from matloop.store import MatloopStore

    config = parse_config(json.loads(Path(sys.argv[1]).read_text()))
    cand = MatloopStore(config.store).claim_candidate(config.name, 1)
    print(cand.candidate_id, flush=True)
    os._exit(9)
""")


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, **kwargs,
    )


@pytest.fixture
def screened_round(tmp_path):
    """A campaign whose round 1 is generated and screened: 5 candidates selected."""
    data = {
        "name": "concurrency-na-cl",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "budget": {"rounds": 1, "candidates_per_round": 10, "relaxations_per_round": 5},
        "relaxer": {"steps": 150},
        "store": f"sqlite://{tmp_path}/store.db",
        "output": str(tmp_path / "out"),
        "seed": 5,
    }
    config = parse_config(data)
    run = CampaignRun(config)
    run.prepare_references()
    assert run.start_round().round == 1
    run.generate(1)
    run.screen(1)
    selected = [c.candidate_id for c in run.store.candidates(config.name, status="selected")]
    assert len(selected) == 5
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(data))
    run.store.close()
    return config, config_file, selected


def test_two_workers_never_relax_a_candidate_twice(screened_round, tmp_path):
    config, config_file, selected = screened_round

    # a worker claims one candidate and dies holding the claim
    crasher = _python(CRASHER, str(config_file))
    out, err = crasher.communicate(timeout=300)
    assert crasher.returncode == 9, err
    orphan = out.strip()
    assert orphan in selected

    # two workers start relaxing round 1 at the same moment
    go = tmp_path / "go"
    workers = [
        _python(WORKER, str(config_file), str(tmp_path / f"ready-{i}"), str(go))
        for i in range(2)
    ]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(w.poll() is None for w in workers), workers[0].stderr.read()
        time.sleep(0.1)
    go.touch()
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))

    run = CampaignRun(config)
    store, name = run.store, config.name
    # every selected candidate was relaxed exactly once: one relaxation record, one job
    jobs = Counter(
        doc["metadata"]["candidate_id"]
        for doc in store.job_store().query({"metadata.candidate_id": {"$in": selected}})
    )
    assert set(jobs) == set(selected), "a selected candidate was never relaxed"
    assert max(jobs.values()) == 1, f"relaxed twice: {jobs}"
    assert sorted(r.candidate_id for r in store.relaxations(name)) == sorted(selected)
    # nothing is left claimed; the dead worker's claim was taken over by a live one
    candidates = {c.candidate_id: c for c in store.candidates(name, ids=selected)}
    assert all(
        c.status in (CandidateStatus.relaxed, CandidateStatus.failed)
        for c in candidates.values()
    )
    live = {r["worker"] for r in reports}
    assert candidates[orphan].claimed_by in live
    # each worker finished the step only after all claims settled: both report the full count
    for report in reports:
        assert report["counts"]["relaxed"] + report["counts"]["failed"] == len(selected)
    round1 = store.get_round(name, 1)
    assert "relax" in round1.steps_done
    assert round1.metrics["relaxed"] + round1.metrics["failed"] == len(selected)
    # both workers took part (they start together; each relaxation takes seconds)
    owners = Counter(c.claimed_by for c in candidates.values())
    print("relaxations per worker:", dict(owners))
    assert len(owners) == 2, owners
