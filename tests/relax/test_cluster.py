"""Tests for the batched fast path on cluster workers (matloop.relax.cluster and
matloop.relax.fireworks_chunks): configuration, chunking, and a FireWorks chunk through a real
``rlaunch`` on a file-backed mongomock LaunchPad (the Dask rounds are in
``tests/loop/test_cluster_round.py``)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from matloop.config import BATCHED_EXECUTOR_SETTINGS, ConfigError, parse_config
from matloop.relax.cluster import DaskBatchedRelaxer, chunked
from matloop.relax.relaxer import build_relaxer


def _config(relaxer: dict) -> dict:
    return {"name": "cluster", "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
            "relaxer": relaxer}  # fmt: skip


def test_batched_on_dask_is_accepted_and_builds_a_chunked_relaxer() -> None:
    config = parse_config(_config({
        "batched": True, "batch_size": 8, "executor": "dask",
        "executor_settings": {"address": "tcp://scheduler:8786", "chunk_size": 4},
    }))  # fmt: skip
    relaxer = build_relaxer(config.relaxer, config.chemical_space)
    assert isinstance(relaxer, DaskBatchedRelaxer)
    assert (relaxer.address, relaxer.chunk_size, relaxer.batch_size) == (
        "tcp://scheduler:8786", 4, 8)  # fmt: skip
    assert relaxer.max_atoms == 4 and relaxer.claim_size is None
    assert relaxer.potential == "CHGNet 0.3.0"  # the same hulls as every CHGNet path


@pytest.mark.parametrize(
    ("relaxer", "message"),
    [
        ({"batched": True, "executor": "jobflow-remote"},
         "jobflow-remote runs one job per crystal"),
        ({"batched": True, "executor": "dask", "executor_settings": {"workers": 2}},
         "relaxer.executor_settings: unknown setting 'workers' for batched: true on dask; "
         "known: address"),
        ({"batched": True, "executor": "dask",
          "executor_settings": {"address": "tcp://x:8786", "cluster_class": "a.B"}},
         "give dask either address (a running scheduler) or cluster_class"),
        ({"batched": True, "executor": "fireworks", "executor_settings": {"address": "x"}},
         "unknown setting 'address' for batched: true on fireworks"),
    ],
)  # fmt: skip
def test_config_refuses_what_the_cluster_path_cannot_do(relaxer: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")
                       .replace(")", r"\)")):  # fmt: skip
        parse_config(_config(relaxer))


def test_the_config_knows_exactly_the_relaxers_settings() -> None:
    """The settings config accepts are the relaxers' own fields (they cannot drift apart)."""
    from matloop.relax.fireworks_chunks import FireWorksBatchedRelaxer

    own = {"fmax", "steps", "relax_cell", "batch_size", "max_atoms"}  # from the relaxer config
    for executor, cls in (("dask", DaskBatchedRelaxer), ("fireworks", FireWorksBatchedRelaxer)):
        fields = {f.name for f in dataclasses.fields(cls) if f.init} - own
        assert set(BATCHED_EXECUTOR_SETTINGS[executor]) == fields, executor


def test_chunks_cover_every_item_once() -> None:
    items = list(range(11))
    chunks = chunked(items, 4)
    assert [len(c) for c in chunks] == [4, 4, 3]
    assert [i for c in chunks for i in c] == items
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        DaskBatchedRelaxer(chunk_size=0)


FIREWORKS_SCRIPT = textwrap.dedent(
    """
    import json, os
    from fireworks import LaunchPad
    from pymatgen.core import Lattice, Structure
    from matloop.relax.fireworks_chunks import FireWorksBatchedRelaxer

    def rocksalt(a):
        return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    overlapping = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    items = [("a", rocksalt(5.4)), ("bad", overlapping), ("b", rocksalt(5.9))]
    lpad = LaunchPad(host="localhost", name="fw_test")  # mongomock: see the env
    lpad.reset("", require_password=False)
    relaxer = FireWorksBatchedRelaxer(launchpad=lpad, chunk_size=2, n_workers=1,
                                      worker_dir={work!r}, timeout_s=300, steps=200,
                                      worker_env={{"MONGOMOCK_SERVERSTORE_FILE": {lp!r}}})
    outs = relaxer.relax(items)
    lpad = LaunchPad.from_dict(lpad.to_dict())  # mongomock: read what the worker wrote
    states = sorted(fw["state"] for fw in lpad.fireworks.find({{}}))
    print(json.dumps({{"outs": [o.model_dump(mode="json") for o in outs],
                      "states": states, "chunks": relaxer.chunks, "pid": os.getpid()}}))
    """
)


@pytest.mark.slow
def test_a_fireworks_chunk_runs_the_batched_relaxer_through_rlaunch(tmp_path: Path) -> None:
    script = FIREWORKS_SCRIPT.format(work=str(tmp_path / "work"), lp=str(tmp_path / "lp.json"))
    (tmp_path / "lp.json").write_text("{}")  # mongomock-persistence reads it on start
    env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(tmp_path / "lp.json"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outs = {o["candidate_id"]: o for o in result["outs"]}
    assert [o["candidate_id"] for o in result["outs"]] == ["a", "bad", "b"]
    assert outs["a"]["ok"] and outs["b"]["ok"]
    assert outs["bad"]["reason"].startswith("atoms too close")
    # NaCl rock salt relaxes to one cell whatever it started from
    assert outs["a"]["energy_per_atom"] == pytest.approx(outs["b"]["energy_per_atom"], abs=5e-3)
    assert all(o["job_uuid"] is None for o in result["outs"])  # the batched path, not atomate2
    # two fireworks (chunks of 2 and 1), both completed by the one rlaunch worker process,
    # which loaded the model for the first chunk and kept it warm for the second
    assert result["states"] == ["COMPLETED", "COMPLETED"]
    chunks = result["chunks"]
    assert len(chunks) == 2 and len({c["pid"] for c in chunks}) == 1
    assert chunks[0]["pid"] != result["pid"]  # an rlaunch process ran them
    first, second = sorted(chunks, key=lambda c: -c["model_load_s"])
    assert second["model_load_s"] < 0.1 * first["model_load_s"]
    assert (tmp_path / "work" / "worker-0").is_dir()


def test_slurm_templates_give_one_worker_per_gpu_and_single_threaded_cpu_workers() -> None:
    """``infra/dask/batched.yaml`` renders the job scripts docs/cluster.md describes."""
    import copy

    import dask.config
    import dask_jobqueue  # noqa: F401  (its defaults enter dask's configuration)

    infra = Path(__file__).resolve().parents[2] / "infra" / "dask"
    saved = copy.deepcopy(dask.config.config)
    try:
        dask.config.update(dask.config.config, dask.config.collect(paths=[str(infra)], env={}),
                           priority="new")  # fmt: skip
        from dask_jobqueue import SLURMCluster

        scripts = {}
        for name in ("slurm-gpu", "slurm-cpu"):
            with SLURMCluster(config_name=name) as cluster:
                scripts[name] = cluster.job_script()
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)
    gpu, cpu = scripts["slurm-gpu"], scripts["slurm-cpu"]
    assert "#SBATCH --gres=gpu:1" in gpu and "--nworkers" not in gpu  # one worker per GPU
    assert "--nthreads 1" in gpu and "--cpus-per-task=8" in gpu  # one chunk at a time
    assert "--gres" not in cpu and "--nthreads 1" in cpu and "--nworkers 4" in cpu
    assert 'CUDA_VISIBLE_DEVICES=""' in cpu
    for script in scripts.values():
        assert "infra/slurm/env.sh" in script


def _python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (its own allocator and environment); its stdout."""
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**environ, **env},
                         capture_output=True, text=True, timeout=240, check=True)  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def test_workers_matloop_starts_keep_glibcs_adaptive_allocator() -> None:
    # Dask's nanny would start them with MALLOC_TRIM_THRESHOLD_=65536 (2.4x the CPU for
    # CHGNet) and leave it in the starting process's environment too
    seen = json.loads(_python("""
        import json, os
        from matloop.relax.executors import start_dask
        client, cluster = start_dask(None, None, {}, 1)
        workers = client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
        print(json.dumps({"workers": list(workers.values()),
                          "here": os.environ.get("MALLOC_TRIM_THRESHOLD_")}))
        client.close(); cluster.close()
    """))
    assert seen == {"workers": [None], "here": None}


@pytest.mark.parametrize(("env", "tuned"), [({"MALLOC_TRIM_THRESHOLD_": "65536"}, "True"),
                                            ({}, "False")])  # fmt: skip
def test_a_worker_started_with_a_malloc_trim_threshold_gets_high_thresholds_back(env, tuned):
    code = """
        from matloop.relax.executors import tune_worker_allocator
        print(tune_worker_allocator(), tune_worker_allocator())
    """
    assert _python(code, **env) == f"{tuned} False"  # once per process


def test_a_campaign_closes_the_dask_cluster_its_relaxer_started() -> None:
    from matloop.loop import CampaignRun

    config = {**_config({"batched": True, "batch_size": 4, "executor": "dask",
                         "executor_settings": {"n_workers": 1}}), "store": "memory://"}  # fmt: skip
    run = CampaignRun(parse_config(config))
    relaxer = run.context.relaxer
    relaxer.client()
    cluster = relaxer._cluster
    run.context.close_relaxers()  # what the campaign flow does when its rounds end
    assert relaxer._client is None
    assert cluster.status.name == "closed"
    run.context.close_relaxers()  # twice is harmless
