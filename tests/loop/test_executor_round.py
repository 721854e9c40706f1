"""A round whose relaxations fan out to a real local Dask cluster through the config."""

from __future__ import annotations

import pytest

from matloop.config import parse_config
from matloop.loop import CampaignRun

pytestmark = pytest.mark.slow


def test_round_relaxes_through_the_dask_executor(tmp_path):
    config = parse_config({
        "name": "dask-round",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": [{"name": "prototype_substitution"}],
        "budget": {"candidates_per_round": 6, "relaxations_per_round": 3},
        "relaxer": {"steps": 150, "executor": "dask",
                    "executor_settings": {"n_workers": 2}},
        "store": f"sqlite://{tmp_path}/store.db",
    })
    run = CampaignRun(config)
    run.prepare_references()
    doc = run.run_round()
    assert doc.status == "completed"
    assert doc.metrics["selected"] == 3
    assert doc.metrics["relaxed"] + doc.metrics["failed"] == 3
    relaxations = run.store.relaxations("dask-round")
    assert len(relaxations) == 3
    # Dask worker processes ran them (the local executor records no worker)
    assert all((r.worker or "").startswith("tcp://") for r in relaxations), relaxations
    assert doc.metrics["relaxed"] >= 1 and sum(r.ok for r in relaxations) == doc.metrics["relaxed"]
    job_store = run.store.job_store()
    for relax in relaxations:
        if relax.ok:  # the workers' task documents came back to the campaign's job store
            assert job_store.query_one({"uuid": relax.job_uuid}) is not None
    assert doc.metrics["evaluated"] == doc.metrics["relaxed"]
