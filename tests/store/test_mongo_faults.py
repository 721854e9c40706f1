"""The Mongo backend when the server goes away mid-step: pymongo retries, then the step stops
with a clear error within seconds; nothing half-written is misread; after the server is
back, rerunning the step finishes the round exactly as an undisturbed run does.

The server is nx-27017 (MongoDB's wire protocol over SQLite), started on a loopback port.
It is not a faithful MongoDB: no authentication, no replica sets or transactions, its own
``find_one_and_update`` atomicity, and collection names that are SQL keywords fail (the test
prefixes them). What it can judge is the client side: timeouts, retries,
errors on a dropped connection, resuming from what was committed. Atomic claims across
workers and credential handling against a real server are tested only against MongoDB.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from handmade_campaign import NAME, build_campaign  # noqa: E402

PLANTED = "Pl4nted-S3cret-pw"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """nx-27017 on 127.0.0.1, restartable on the same database file and port."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.proc = folder, _free_port(), None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/matloop_faults"

    def start(self) -> None:
        exe = shutil.which("nx-27017") or str(Path(sys.executable).parent / "nx-27017")
        self.proc = subprocess.Popen(
            [exe, "--host", "127.0.0.1", "-p", str(self.port), "--db",
             str(self.folder / "nx.db"), "--log-file", str(self.folder / "nx.log"),
             "--pid-file", str(self.folder / "nx.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("nx-27017 did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path, monkeypatch):
    from matloop.store.backends import Backend

    original = Backend.open

    def prefixed(self, collection, key="_id"):
        # nx-27017 keeps collections in SQL tables: "references" is a reserved word there
        return original(self, f"t_{collection}", key)

    monkeypatch.setattr(Backend, "open", prefixed)
    if not (shutil.which("nx-27017") or (Path(sys.executable).parent / "nx-27017").exists()):
        pytest.skip("nx-27017 is not installed")
    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.kill()


def _evaluations(run) -> dict:
    return {e.candidate_id: (round(e.e_above_hull, 6), e.is_novel, e.is_unique, e.round)
            for e in run.store.evaluations(NAME)}


def test_server_lost_mid_step_stops_cleanly_and_resumes(server, monkeypatch):
    from pymongo.errors import PyMongoError

    from matloop.loop import CampaignRun
    from matloop.store import MatloopStore

    expected = build_campaign("memory://", evaluate_round_2=True)  # no faults
    run = build_campaign(server.uri)  # round 2 relaxed, not yet evaluated
    before = {c.candidate_id: c.status for c in run.store.candidates(NAME)}

    original = MatloopStore.save_evaluations

    def server_dies_first(self, docs):
        server.kill()  # the connection drops as the step writes its results
        return original(self, docs)

    monkeypatch.setattr(MatloopStore, "save_evaluations", server_dies_first)
    start = time.monotonic()
    with pytest.raises(PyMongoError) as err:
        run.evaluate(2)
    waited = time.monotonic() - start
    assert waited < 60, f"took {waited:.0f} s to give up"
    assert f"127.0.0.1:{server.port}" in str(err.value)  # names the server it could not reach
    monkeypatch.setattr(MatloopStore, "save_evaluations", original)

    server.start()
    resumed = CampaignRun(run.config, store=MatloopStore(server.uri))
    # the interrupted step left nothing that reads as done
    round2 = resumed.store.get_round(NAME, 2)
    assert "evaluate" not in round2.steps_done
    assert {c.candidate_id: c.status for c in resumed.store.candidates(NAME)} == before
    resumed.evaluate(2)
    assert _evaluations(resumed) == _evaluations(expected)
    assert resumed.store.get_round(NAME, 2).metrics["evaluated"] == (
        expected.store.get_round(NAME, 2).metrics["evaluated"]
    )


def test_unreachable_store_fails_fast_without_leaking_the_password(caplog):
    from pymongo.errors import PyMongoError

    from matloop.store import CampaignDoc, MatloopStore

    caplog.set_level(logging.DEBUG)
    uri = f"mongodb://matloop:{PLANTED}@127.0.0.1:{_free_port()}/db"  # nothing listens
    store = MatloopStore(uri)
    start = time.monotonic()
    with pytest.raises(PyMongoError) as err:
        store.save_campaign(CampaignDoc(campaign="x", config={}))
    assert time.monotonic() - start < 30
    assert PLANTED not in str(err.value) and PLANTED not in repr(store)
    assert PLANTED not in caplog.text


def test_uri_options_win_over_the_defaults():
    from matloop.store.backends import mongo_client_options

    assert mongo_client_options("mongodb://h/db")["serverSelectionTimeoutMS"] == 5000
    opts = mongo_client_options("mongodb://h/db?serverSelectionTimeoutMS=900&retryWrites=false")
    assert "serverSelectionTimeoutMS" not in opts and "retryWrites" not in opts
