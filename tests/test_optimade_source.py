"""Known crystals from OPTIMADE, against a real local OPTIMADE server.

The ``optimade`` package ships a reference server (FastAPI, mongomock backend) and test data;
the fixture starts it under uvicorn on a free port. The campaign takes the space's
structures from it once, stores them with provider, id and retrieval date, re-runs offline
from the cache, and judges a copy of a served crystal ``known``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("optimade.client")
pytest.importorskip("uvicorn")

from matloop.config import parse_config  # noqa: E402
from matloop.loop import CampaignRun  # noqa: E402
from matloop.store.documents import structure_dict  # noqa: E402
from matloop.optimade_source import fetch_optimade  # noqa: E402
from matloop.store import (  # noqa: E402
    CandidateDoc,
    CandidateStatus,
    MatloopStore,
    RelaxationDoc,
    RoundDoc,
)

#: The reference server's test data keeps ids in ``task_id``: its own config aliases them.
ALIASES = {"structures": {"id": "task_id", "chemical_formula_reduced": "pretty_formula",
                          "chemical_formula_anonymous": "formula_anonymous"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OptimadeServer:
    """The optimade package's reference server with its bundled test data."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import httpx

        env = dict(os.environ, OPTIMADE_INSERT_TEST_DATA="true",
                   OPTIMADE_DATABASE_BACKEND="mongomock", OPTIMADE_BASE_URL=self.base_url,
                   OPTIMADE_CONFIG_FILE=os.devnull, OPTIMADE_ALIASES=json.dumps(ALIASES))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "optimade.server.main:app", "--host",
             "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the OPTIMADE reference server exited")
            try:
                if httpx.get(f"{self.base_url}/v1/info", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("the OPTIMADE reference server did not start in 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    srv = OptimadeServer()
    srv.start()
    yield srv
    srv.stop()


def test_fetch_takes_the_space_and_caches_it(server, tmp_path):
    report = fetch_optimade(server.base_url, None, ["Ac", "Mg"], cache_dir=tmp_path)
    # the test data's Ac-Mg space: elemental Ac and Ac2Mg, nothing with a third element;
    # its Ac2Mg has its three atoms on one point: reported as a problem, not used
    assert [p.split(":")[2].strip() for p in report.problems] == ["atoms closer than 0.5 Å"]
    assert "mpf_23" in report.problems[0]
    by_id = {c.source_id: c for c in report.crystals}
    assert set(by_id) == {"mpf_1"}
    assert by_id["mpf_1"].structure.composition.reduced_formula == "Ac"
    assert {c.source for c in report.crystals} == {"optimade:exmpl"}  # the provider prefix
    assert all(c.retrieved_at for c in report.crystals)
    (cache,) = tmp_path.glob("*.json")
    assert json.loads(cache.read_text())["filter"] == 'elements HAS ONLY "Ac","Mg"'
    # the user's filter narrows the space's
    narrow = fetch_optimade(server.base_url, "nsites>=2", ["Ac", "Mg"], cache_dir=tmp_path)
    assert narrow.crystals == [] and "mpf_23" in narrow.problems[0]


def test_an_unreachable_provider_without_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="could not be queried.*nothing is cached"):
        fetch_optimade(f"http://127.0.0.1:{_free_port()}", None, ["Ac"], cache_dir=tmp_path,
                       timeout=2)


def _campaign(tmp_path, base_url, table) -> CampaignRun:
    config = parse_config({
        "name": "optimade-ac-mg",
        "chemical_space": {"elements": ["Ac", "Mg"], "max_atoms": 4},
        # the "relaxer" answers from a table: the test is about where references come from
        "relaxer": {"potential": "replay", "replay": {"path": str(table),
                                                      "energy_column": "e_form"}},
        "seed_data": {"optimade": [{"base_url": base_url, "cache": str(tmp_path / "cache")}]},
        "store": f"monty://{tmp_path}/store",
    })
    return CampaignRun(config, MatloopStore(config.store))


def _table(tmp_path, crystals) -> str:
    import csv

    path = tmp_path / "table.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "cif", "e_form"])
        for c in crystals:
            writer.writerow([c.source_id, c.structure.to(fmt="cif"), -0.2])
    return path


def _evaluate(run: CampaignRun, structures: dict[str, Structure]) -> dict:
    """Candidates written by hand (as if generated and relaxed), judged by the real
    ``evaluate`` step against the stored OPTIMADE references."""
    from matloop.identity import candidate_id

    run.store.save_round(RoundDoc(campaign=run.name, round=1,
                                  steps_done=["generate", "screen", "relax"]))
    ids = {}
    for key, structure in structures.items():
        cid = candidate_id(structure)
        ids[cid] = key
        comp = structure.composition
        run.store.add_candidates([CandidateDoc(
            campaign=run.name, candidate_id=cid, round=1, formula=comp.reduced_formula,
            chemsys=comp.chemical_system, nsites=len(structure),
            structure=structure_dict(structure), generator="prototype_substitution",
            status=CandidateStatus.relaxed, selected_round=1,
        )])
        run.store.save_relaxations([RelaxationDoc(
            campaign=run.name, candidate_id=cid, ok=True, converged=True,
            energy_per_atom=-0.1, structure=structure_dict(structure),
            potential=run.potential, round=1,
        )])
    run.evaluate(1)
    return {ids[e.candidate_id]: e for e in run.store.evaluations(run.name)}


def test_a_campaign_stores_optimade_references_reruns_offline_and_judges_novelty(tmp_path):
    server = OptimadeServer()
    server.start()
    try:
        served = fetch_optimade(server.base_url, None, ["Ac", "Mg"],
                                cache_dir=tmp_path / "probe").crystals
        table = _table(tmp_path, served)
        run = _campaign(tmp_path, server.base_url, table)
        result = run.prepare_references()
    finally:
        server.stop()
    assert result.counts["seeds"] == 1 and result.counts["problems"] == 1  # mpf_23, reported
    refs = {r.source_id: r for r in run.references() if r.source != "elemental"}
    assert set(refs) == {"mpf_1"}
    assert {r.source for r in refs.values()} == {"optimade:exmpl"}
    assert all(r.retrieved_at for r in refs.values())
    assert refs["mpf_1"].reference_id == "seed:optimade:exmpl:mpf_1"

    # the server is gone: a second campaign on the same cache takes the same crystals
    again = _campaign(tmp_path / "rerun", server.base_url, table)
    again.config.seed_data.optimade[0].cache = str(tmp_path / "cache")
    crystals, problems = again.load_seed_crystals()
    assert len(problems) == 1 and [c.source_id for c in crystals] == ["mpf_1"]
    assert crystals[0].retrieved_at == refs["mpf_1"].retrieved_at

    ac = served[0].structure.copy()
    ac.apply_strain(0.01)
    judged = _evaluate(run, {
        "served": ac,  # a copy of the served Ac crystal: known
        "fcc": Structure(Lattice.cubic(5.3), ["Ac"] * 4,
                         [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "cscl": Structure(Lattice.cubic(3.9), ["Ac", "Mg"], [[0, 0, 0], [0.5] * 3]),
        "mg": Structure(Lattice.cubic(4.5), ["Mg"] * 4,
                        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    })
    assert judged["served"].novelty == "known"
    assert judged["served"].duplicate_of == "seed:optimade:exmpl:mpf_1"
    # fcc Ac: the server holds an Ac crystal, and this is not it: novel
    assert judged["fcc"].novelty == "novel" and judged["fcc"].is_novel
    assert judged["fcc"].novelty_reference == {
        "sets": ["optimade:exmpl"], "chemsys": "Ac", "n_chemsys": 1, "n_subsystems": {}}
    # AcMg: the server's one Ac-Mg entry was unusable, so Ac-Mg is not judged
    assert judged["cscl"].novelty == "unjudged" and not judged["cscl"].is_novel
    assert judged["cscl"].novelty_reference["n_subsystems"] == {"Ac": 1, "Mg": 0}
    # fcc Mg: the server holds no Mg crystal, so its novelty cannot be judged
    assert judged["mg"].novelty == "unjudged" and not judged["mg"].is_novel
