"""The quickstart campaign, fixed seed, real CHGNet: the same candidate ids, statuses and
energies as the record made before the loop's architecture was redone (#12).

The record (``tests/data/quickstart_reference.json``) holds only what the campaign
decided, read back through the store's facade, so it does not depend on the storage
engine. Regenerate it only for an intended change of behaviour:
``MATLOOP_WRITE_REFERENCE=1 pytest tests/loop/test_behaviour_preserved.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "deployments" / "campaigns" / "quickstart.yaml"
RECORD = ROOT / "tests" / "data" / "quickstart_reference.json"
#: CHGNet on one CPU thread repeats itself to ~1e-6 eV/atom; this leaves room for BLAS.
ENERGY_TOL = 1e-4


def _config(tmp_path):
    from matloop.config import parse_config

    data = yaml.safe_load(QUICKSTART.read_text())
    # smaller than the quickstart so the test takes minutes, same generators and relaxer
    data["budget"] = {"rounds": 2, "candidates_per_round": 16, "relaxations_per_round": 4}
    data["store"] = f"sqlite://{tmp_path}/store.db"  # the embedded default, on a tmp path
    data["output"] = str(tmp_path / "out")
    return parse_config(data)


def _run_campaign(config) -> None:
    """What ``campaign_flow`` does, without Prefect: references, rounds, finish."""
    from matloop.loop import CampaignRun

    run = CampaignRun(config)
    run.ensure_campaign()
    run.prepare_references()
    reason = None
    for _ in range(config.budget.rounds):
        if (reason := run.stop_reason()) is not None:
            break
        run.run_round()
    run.finish(reason or run.stop_reason())


def _record(config) -> dict:
    from matloop.store import MatloopStore

    store = MatloopStore(config.store)
    name = config.name
    relaxations = {r.candidate_id: r for r in store.relaxations(name)}
    evaluations = {e.candidate_id: e for e in store.evaluations(name)}

    def energy(value):
        return None if value is None else float(value)

    candidates = {}
    for cand in sorted(store.candidates(name), key=lambda c: c.candidate_id):
        relax = relaxations.get(cand.candidate_id)
        ev = evaluations.get(cand.candidate_id)
        candidates[cand.candidate_id] = {
            "round": cand.round,
            "generator": cand.generator,
            "status": str(cand.status),
            "selected_round": cand.selected_round,
            "relaxed_ok": None if relax is None else bool(relax.ok),
            "energy_per_atom": None if relax is None else energy(relax.energy_per_atom),
            "e_above_hull": None if ev is None else energy(ev.e_above_hull),
        }
    (potential,) = {r.potential for r in relaxations.values()}  # e.g. "CHGNet 0.3.0"
    references = {
        ref.reference_id: energy(ref.energy_per_atom) for ref in store.references(potential)
    }
    rounds = [
        {"round": r.round, "status": r.status}
        for r in store.rounds(name)
    ]
    return {"campaign": name, "references": references, "rounds": rounds,
            "candidates": candidates}


def _compare(got, want, path="") -> list[str]:
    """Differences, energies within ENERGY_TOL, everything else exact."""
    if isinstance(want, dict) and isinstance(got, dict):
        problems = [f"{path}: missing {k!r}" for k in want if k not in got]
        problems += [f"{path}: unexpected {k!r}" for k in got if k not in want]
        for key in want.keys() & got.keys():
            problems += _compare(got[key], want[key], f"{path}/{key}")
        return problems
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [p for i, (g, w) in enumerate(zip(got, want, strict=True))
                for p in _compare(g, w, f"{path}[{i}]")]
    if isinstance(want, float) and isinstance(got, float):
        return [] if abs(got - want) <= ENERGY_TOL else [f"{path}: {got} != {want}"]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def test_quickstart_campaign_is_unchanged(tmp_path, one_torch_thread):
    config = _config(tmp_path)
    _run_campaign(config)
    got = _record(config)
    assert len(got["candidates"]) > 10 and got["rounds"] and got["references"], "no campaign ran"
    assert any(c["energy_per_atom"] is not None for c in got["candidates"].values())
    if os.environ.get("MATLOOP_WRITE_REFERENCE") == "1":
        RECORD.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(RECORD.read_text())
    problems = _compare(got, want)
    assert not problems, "behaviour changed:\n" + "\n".join(problems[:40])
