"""One run per campaign: the campaign lease, in one process and over real processes on the
embedded store and on a MongoDB wire server (nx-27017)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from matloop.store import MatloopStore
from matloop.store.lease import TOKEN_ENV, CampaignLease, LeaseHeld, read_lease

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_mongo_faults import Server  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DO_NOT_TRACK": "1"}

# A process that takes the lease (or says who has it), then holds it until killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from matloop.store import MatloopStore
    from matloop.store.lease import CampaignLease, LeaseHeld

    uri, name, go = sys.argv[1:4]
    store = MatloopStore(uri)
    store.find_raw("leases", {})  # connect before the race
    while not __import__("pathlib").Path(go).exists():
        time.sleep(0.01)
    try:
        lease = CampaignLease(store, name).acquire()
    except LeaseHeld as err:
        print("refused", err, flush=True)
        sys.exit(3)
    print("held", flush=True)
    with lease.keep_alive():
        time.sleep(float(sys.argv[4]) if len(sys.argv) > 4 else 3600)
""")


def test_one_holder_and_a_clear_refusal():
    store = MatloopStore("memory://")
    lease = CampaignLease(store, "demo").acquire()
    with pytest.raises(LeaseHeld) as err:
        CampaignLease(store, "demo").acquire()
    text = str(err.value)
    assert text.startswith("campaign 'demo' is already running: ")
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in text
    assert "--take-over" in text and "expires at" in text
    CampaignLease(store, "other").acquire()  # another campaign is free
    lease.release()
    CampaignLease(store, "demo").acquire()  # a released lease is taken at once


def test_heartbeat_extends_and_a_take_over_is_noticed():
    store = MatloopStore("memory://")
    lease = CampaignLease(store, "demo", ttl_s=30).acquire()
    before = read_lease(store, "demo").expires
    time.sleep(0.01)
    assert lease.heartbeat() and read_lease(store, "demo").expires > before
    CampaignLease(store, "demo").acquire(take_over=True)
    assert not lease.heartbeat() and lease.lost
    lease.release()  # no longer ours: nothing changes
    assert not read_lease(store, "demo").released


def test_an_expired_lease_of_another_host_is_taken_over(monkeypatch):
    store = MatloopStore("memory://")
    lease = CampaignLease(store, "demo", ttl_s=0.5).acquire()
    # as seen from another machine: the holder cannot be checked by pid, only by expiry
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    with pytest.raises(LeaseHeld):
        CampaignLease(store, "demo").acquire()
    time.sleep(0.6)
    taken = CampaignLease(store, "demo").acquire()
    assert read_lease(store, "demo").token == taken.token != lease.token


def test_a_child_of_the_holder_shares_its_lease(monkeypatch):
    store = MatloopStore("memory://")
    parent = CampaignLease(store, "demo").acquire()
    monkeypatch.setenv(TOKEN_ENV, f"demo={parent.token}")
    child = CampaignLease(store, "demo").acquire()
    assert child.inherited
    child.release()  # the parent keeps it
    assert not read_lease(store, "demo").released
    monkeypatch.setenv(TOKEN_ENV, f"other={parent.token}")
    with pytest.raises(LeaseHeld):
        CampaignLease(store, "demo").acquire()


@pytest.mark.parametrize("scheme", ["sqlite", "monty"])
def test_keep_alive_renews_from_a_thread_on_the_embedded_store(tmp_path, scheme):
    uri = f"{scheme}://{tmp_path}/store" + (".db" if scheme == "sqlite" else "")
    lease = CampaignLease(MatloopStore(uri), "demo", ttl_s=0.8).acquire()
    with lease.keep_alive():
        time.sleep(2.0)  # more than two lease lengths
        with pytest.raises(LeaseHeld):
            CampaignLease(MatloopStore(uri), "demo").acquire()
    assert read_lease(MatloopStore(uri), "demo").released


@pytest.mark.parametrize("scheme", ["sqlite", "monty"])
def test_a_relative_store_path_survives_a_change_of_working_directory(tmp_path, scheme,
                                                                      monkeypatch):
    """jobflow's local runs chdir into each job's folder: the heartbeat thread (and any
    collection opened meanwhile) must still find the store the run opened, not a new empty
    one beside the job (which made every scheduled run's lease look lost at once)."""
    (tmp_path / "run").mkdir()
    (tmp_path / "job").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    uri = f"{scheme}://./store" + (".db" if scheme == "sqlite" else "")
    store = MatloopStore(uri)
    lease = CampaignLease(store, "demo", ttl_s=0.8).acquire()
    with lease.keep_alive():
        monkeypatch.chdir(tmp_path / "job")  # as jobflow does while a job runs
        time.sleep(1.0)  # more than a lease length: several heartbeats
        assert not lease.lost
        assert read_lease(store.reopen(), "demo").token == lease.token
    assert not (tmp_path / "job" / Path(uri.split("://")[1]).name).exists()
    assert read_lease(store, "demo").released


def _race(uri: str, tmp_path: Path, n: int, hold_s: float = 3600) -> list[subprocess.Popen]:
    go = tmp_path / f"go-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, uri, "race", str(go), str(hold_s)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ENV) for _ in range(n)]
    time.sleep(4.0)  # every process imported matloop and opened the store
    go.touch()
    return procs


def _lock_over_real_processes(uri: str, tmp_path: Path) -> None:
    """Four processes race for one lease: one holds it, three are refused naming it; the
    holder is SIGKILLed and the next run takes over (dead pid on this host)."""
    procs = _race(uri, tmp_path, 4)
    refused = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=60)
            refused.append((proc.returncode, out))
        except subprocess.TimeoutExpired:
            holder = proc
    assert len(refused) == 3, refused
    assert all(code == 3 and f"pid {holder.pid} on host" in out for code, out in refused), (
        holder.pid, refused)
    # the real command refuses at once, naming the holder
    config = tmp_path / "race.json"
    config.write_text(json.dumps({"name": "race", "chemical_space": {"elements": ["Na", "Cl"]},
                                  "store": uri, "output": str(tmp_path / "out")}))
    started = time.monotonic()
    cli = subprocess.run([sys.executable, "-m", "matloop.cli", "run", str(config)],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert cli.returncode == 3, cli.stderr
    assert f"campaign 'race' is already running: pid {holder.pid}" in cli.stderr
    assert "Traceback" not in cli.stderr
    print(f"refused in {time.monotonic() - started:.1f} s")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    (taker,) = _race(uri, tmp_path, 1, hold_s=0)
    out, err = taker.communicate(timeout=60)
    assert taker.returncode == 0 and out.startswith("held"), err


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["sqlite", "monty"])
def test_lock_over_real_processes_on_the_embedded_store(tmp_path, scheme):
    path = tmp_path / ("store.db" if scheme == "sqlite" else "store")
    _lock_over_real_processes(f"{scheme}://{path}", tmp_path)


@pytest.mark.slow
def test_lock_over_real_processes_on_mongodb(tmp_path):
    import shutil

    if not (shutil.which("nx-27017") or (Path(sys.executable).parent / "nx-27017").exists()):
        pytest.skip("nx-27017 is not installed")
    server = Server(tmp_path)
    server.start()
    try:
        _lock_over_real_processes(server.uri, tmp_path)
    finally:
        server.kill()
