"""Materials Project seeding inside a campaign, through the real mp-api client talking to a
local fake of the MP REST API (the API's seam): the 40-atom cap, the chemical space and
a server error."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from pymatgen.core import Lattice, Structure

from matloop.config import parse_config
from matloop.loop import CampaignRun


def rock_salt(a: str = "Na", b: str = "Cl") -> Structure:
    frac = [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
            [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]  # fmt: skip
    return Structure(Lattice.cubic(5.69), [a] * 4 + [b] * 4, frac)


def summary_docs() -> list[dict]:
    big = rock_salt() * (3, 2, 1)  # 48 sites: over the 40-atom cap
    docs = [("mp-22862", rock_salt(), 0.0), ("mp-big", big, 0.01),
            ("mp-23193", rock_salt("K", "Cl"), 0.0)]  # K: outside the campaign's space
    return [{"material_id": m, "structure": s.as_dict(), "energy_above_hull": e}
            for m, s, e in docs]  # fmt: skip


class FakeMaterialsProject(BaseHTTPRequestHandler):
    """The two routes the client uses: ``heartbeat`` and ``materials/summary/``."""

    requests: list = []
    fail_with: int | None = None

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        url = urlparse(self.path)
        type(self).requests.append((url.path, parse_qs(url.query), self.headers.get("x-api-key")))
        status, body = 200, None
        if url.path.endswith("heartbeat"):
            body = {"version": "0.84.0", "db_version": "2025.09.25",
                    "access_controlled_batch_ids": []}  # fmt: skip
        elif self.fail_with:
            status, body = self.fail_with, {"detail": "upstream database unavailable"}
        else:
            docs = summary_docs()
            body = {"data": docs, "meta": {"total_doc": len(docs), "max_limit": 1000}}
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def fake_mp(monkeypatch):
    FakeMaterialsProject.requests, FakeMaterialsProject.fail_with = [], None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeMaterialsProject)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MP_API_ENDPOINT", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("MP_API_KEY", "k" * 32)
    yield FakeMaterialsProject
    server.shutdown()


def campaign() -> CampaignRun:
    return CampaignRun(parse_config({
        "name": "mp-seeded",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 8},
        "seed_data": {"materials_project": True},
        "store": "memory://",
    }))


def test_seed_crystals_come_from_the_materials_project(fake_mp):
    crystals, problems = campaign().load_seed_crystals()
    assert problems == []
    # the 48-site crystal is over the 40-atom cap, KCl outside Na-Cl
    assert [c.source_id for c in crystals] == ["mp-22862"]
    assert crystals[0].source == "materials-project"
    assert crystals[0].properties == {"mp_energy_above_hull": 0.0}
    (path, query, key), = [r for r in fake_mp.requests if "summary" in r[0]]
    assert key == "k" * 32
    assert sorted(query["chemsys"][0].split(",")) == ["Cl", "Cl-Na", "Na"]


def test_a_server_error_is_one_clear_line(fake_mp):
    fake_mp.fail_with = 400
    with pytest.raises(RuntimeError, match="^Materials Project fetch failed: ") as err:
        campaign().load_seed_crystals()
    assert "\n" not in str(err.value)
