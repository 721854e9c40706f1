"""Scheduled campaigns on a real Prefect server on localhost.

A ``prefect server`` with its own ``PREFECT_HOME`` in a temporary folder; then

- ``matloop serve CONFIG --interval …`` (no work pool): the schedule fires twice and each run
  advances the campaign by one round; the flow runs, task runs, artifacts and logs are read
  back through the Prefect API, and a planted secret appears nowhere in them;
- ``deployments/prefect.yaml`` deployed onto a ``process`` work pool and run by
  ``prefect worker start``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matloop.flows.server import LocalPrefectServer
from matloop.store import MatloopStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "pw-Zq8vX3kLr9"  # stands in for a password: it must never reach the Prefect server
STEPS = ["generate", "screen", "relax", "evaluate", "verify", "learn"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    with LocalPrefectServer(home) as running:
        yield running


class Api:
    """The few Prefect REST calls these tests need."""

    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=30)

    def post(self, path: str, body: dict | None = None):
        response = self.http.post(path, json=body or {})
        response.raise_for_status()
        return response.json()

    def get(self, path: str):
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def flow_runs(self, **flow_run_filter) -> list[dict]:
        return self.post("/flow_runs/filter", {"flow_runs": flow_run_filter, "limit": 200})

    def deployment(self, flow: str, name: str) -> dict:
        return self.get(f"/deployments/name/{flow}/{name}")

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.post(
            "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}}
        )

    def artifacts(self, flow_run_id: str) -> list[dict]:
        return self.post(
            "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        )

    def logs(self) -> list[dict]:
        logs, offset = [], 0
        while batch := self.post("/logs/filter", {"limit": 200, "offset": offset}):
            logs += batch
            offset += len(batch)
        return logs

    def wait_for_runs(self, deployment_id: str, n: int, timeout: float, proc=None) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.flow_runs(deployment_id={"any_": [deployment_id]})
            done = [r for r in runs if r["state_type"] == "COMPLETED"]
            bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
            assert not bad, f"scheduled run {bad[0]['name']} ended {bad[0]['state_type']}"
            if len(done) >= n:
                return sorted(done, key=lambda r: r["start_time"])
            if proc is not None:
                assert proc.poll() is None, proc.stdout.read()[-4000:]
            time.sleep(2)
        raise TimeoutError(f"fewer than {n} completed run(s) after {timeout:.0f} s")


def _campaign(tmp: Path, name: str, store: str) -> Path:
    data = {
        "name": name,
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "budget": {"rounds": 5, "candidates_per_round": 6, "relaxations_per_round": 2},
        "relaxer": {"steps": 150},
        "store": store,
        "output": str(tmp / "out"),
        "seed": 3,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def _run_limit(deployment: dict) -> int | None:
    """How many runs of the deployment may run at once."""
    limit = deployment.get("global_concurrency_limit") or {}
    return limit.get("limit", deployment.get("concurrency_limit"))


def _stop(proc: subprocess.Popen) -> str:
    """Stop a process this test started (SIGINT, as Ctrl-C) and return its output."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read()


def test_serve_schedule_advances_the_campaign(server, tmp_path):
    api = Api(server.api_url)
    name = "served-na-cl"
    secret_dir = tmp_path / PLANTED  # a resolved value that must stay out of Prefect
    config = _campaign(tmp_path, name, "sqlite://${MATLOOP_E2E_STORE_DIR}/store.db")
    env = server.client_env(
        MATLOOP_E2E_STORE_DIR=str(secret_dir), PREFECT_LOGGING_LEVEL="INFO",
        OMP_NUM_THREADS="1",
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "matloop.cli", "serve", str(config), "--interval", "20",
         "--rounds", "1"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        deployment = None
        while deployment is None:
            assert time.monotonic() < deadline, "the deployment was not created"
            assert serve.poll() is None, serve.stdout.read()
            try:
                deployment = api.deployment("matloop-scheduled", name)
            except Exception:
                time.sleep(1)
        runs = api.wait_for_runs(deployment["id"], 2, timeout=420, proc=serve)
    finally:
        served_output = _stop(serve)

    # the deployment: an interval schedule, one run at a time
    deployment = api.deployment("matloop-scheduled", name)
    assert deployment["schedules"][0]["schedule"]["interval"] == 20
    assert _run_limit(deployment) == 1
    assert deployment["parameters"]["rounds"] == 1
    assert runs[0]["end_time"] <= runs[1]["start_time"], "scheduled runs overlapped"

    # each scheduled run advanced the campaign by one round
    store = MatloopStore(f"sqlite://{secret_dir}/store.db")
    rounds = store.rounds(name)
    assert [r.round for r in rounds][:2] == [1, 2]
    assert all(r.status == "completed" for r in rounds[:2])
    for run in runs[:2]:
        assert run["name"].startswith(f"{name}-scheduled-")
        assert run["parameters"]["config_path"] == str(config)

    # below each scheduled run: the campaign flow and one round flow, named for humans
    all_runs = api.flow_runs()
    by_name = {r["name"]: r for r in all_runs}
    for n in (1, 2):
        round_run = by_name[f"{name}-round-{n}"]
        assert round_run["state_type"] == "COMPLETED"
        tasks = {t["name"]: t for t in api.task_runs(round_run["id"])}
        assert set(tasks) == {f"{step}-round-{n}" for step in STEPS}
        assert all(t["state_type"] == "COMPLETED" for t in tasks.values())
        assert "gpu" in tasks[f"generate-round-{n}"]["tags"]
        assert "gpu" not in tasks[f"relax-round-{n}"]["tags"]

        artifacts = api.artifacts(round_run["id"])
        keyed = {a["key"]: a for a in artifacts if a["key"]}
        assert set(keyed) == {f"{name}-rounds", f"{name}-best", f"{name}-summary"}
        table = keyed[f"{name}-rounds"]["data"]
        table = json.loads(table) if isinstance(table, str) else table
        assert [row["round"] for row in table] == list(range(1, n + 1))
        assert table[-1]["relaxed"] + table[-1]["failed"] == 2
        assert keyed[f"{name}-best"]["type"] == "table"
        summary = keyed[f"{name}-summary"]
        assert summary["type"] == "markdown" and f"# {name}: round {n}" in summary["data"]
        progress = [a for a in artifacts if a["type"] == "progress"]
        assert len(progress) == 1 and float(progress[0]["data"]) == pytest.approx(100.0)
        assert f"round {n}" in progress[0]["description"]

    # the resolved store path (our planted "password") reached no flow run, deployment,
    # task run, artifact or log on the server, nor the serve command's own output
    seen = json.dumps([all_runs, deployment, api.logs()])
    seen += json.dumps(api.post("/artifacts/filter", {"limit": 200}))
    seen += json.dumps(api.post("/task_runs/filter", {"limit": 200}))
    assert api.logs(), "no logs reached the server"
    assert PLANTED not in seen
    assert PLANTED not in served_output
    assert "${MATLOOP_E2E_STORE_DIR}" in seen  # the reference is what travels


def test_prefect_yaml_deploys_to_a_work_pool(server, tmp_path):
    """deployments/prefect.yaml on a `process` pool: deploy, then a worker runs it."""
    api = Api(server.api_url)
    name = "pooled-na-cl"
    config = _campaign(tmp_path, name, "sqlite://./store.db")  # relative: the pull step's folder
    env = server.client_env(PREFECT_LOGGING_LEVEL="INFO", OMP_NUM_THREADS="1",
                            PWD=str(tmp_path))

    def prefect(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "prefect", *args], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=180,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    setup = subprocess.run(
        ["bash", str(ROOT / "deployments/setup.sh"), "-n", "na-cl-hourly",
         "--params", json.dumps({"config_path": config.name, "rounds": 1})],
        env={**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]

    # what prefect.yaml and setup.sh declared
    deployment = api.deployment("matloop-scheduled", "na-cl-hourly")
    assert deployment["work_pool_name"] == "matloop"
    assert deployment["work_queue_name"] == "cpu"
    assert _run_limit(deployment) == 1
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 * * * *"
    assert deployment["entrypoint"] == "matloop.flows.deploy:scheduled_campaign"
    queues = {q["name"]: q for q in api.post("/work_pools/matloop/queues/filter")}
    assert queues["gpu"]["concurrency_limit"] == 1
    limits = api.post("/concurrency_limits/filter")
    assert any(lim["tag"] == "gpu" and lim["concurrency_limit"] == 1 for lim in limits)

    # run it now through a process worker, as the schedule would at the top of the hour
    prefect("deployment", "run", "matloop-scheduled/na-cl-hourly")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "matloop",
         "--work-queue", "cpu"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        (run,) = api.wait_for_runs(deployment["id"], 1, timeout=420, proc=worker)
    finally:
        _stop(worker)
    assert run["name"].startswith(f"{name}-scheduled-")
    store = MatloopStore(f"sqlite://{tmp_path}/store.db")
    (round1,) = store.rounds(name)
    assert round1.status == "completed"
    assert (tmp_path / "out" / name / "report.md").is_file()
