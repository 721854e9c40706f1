"""``acquisition.single_point``: the screen ranks proposals by CHGNet's single-point energy
above the hull, as proposed, from round 1 on and without seed crystals; once enough
candidates are relaxed, the surrogate learns how much relaxing lowers it."""

from __future__ import annotations

import numpy as np
import pytest

from matloop.config import ConfigError, parse_config
from matloop.loop import CampaignRun
from matloop.store.documents import structure_from_dict

pytestmark = pytest.mark.slow


def config(**acquisition):
    return parse_config({
        "name": "single-point",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": [{"name": "prototype_substitution"}, {"name": "random_symmetric"}],
        "budget": {"candidates_per_round": 12, "relaxations_per_round": 4},
        "relaxer": {"steps": 150, "batched": True},
        "acquisition": {"strategy": "joint", "single_point": True, **acquisition},
        "store": "memory://",
        "seed": 0,
    })


def test_rounds_rank_by_single_point_energy_then_learn_the_drop():
    from chgnet.model import CHGNet

    run = CampaignRun(config())
    run.prepare_references()
    for _ in range(3):
        run.run_round()
    store, name = run.store, "single-point"
    metrics = {r: store.get_round(name, r).metrics for r in (1, 2, 3)}
    # no seed crystals, no labels: round 1 still ranks, by the single-point energies alone
    assert metrics[1]["single_point"] is True
    assert metrics[1]["acquisition"].startswith("joint"), metrics[1]
    assert metrics[1]["single_point_drop"].startswith("zero")
    assert metrics[3]["single_point_drop"] == "learned from 8 relaxed candidates"

    screened = [c for c in store.candidates(name) if c.predicted_e_above_hull is not None]
    assert screened and all(c.single_point_energy is not None for c in screened)
    model = CHGNet.load(verbose=False)
    for cand in screened[:5]:
        expected = model.predict_structure(structure_from_dict(cand.structure), task="e")["e"]
        assert cand.single_point_energy == pytest.approx(float(expected), abs=1e-4)

    # round 1 took the lowest predictions of its pool (the drop is zero: std 0)
    first = [c for c in screened if c.round == 1 and np.isfinite(c.predicted_e_above_hull)]
    chosen = sorted(c.predicted_e_above_hull for c in first if c.selected_round == 1)
    rest = [c.predicted_e_above_hull for c in first if c.selected_round != 1]
    assert len(chosen) == 4 and max(chosen) <= min(rest)

    # relaxing lowers the energy: relaxed energies at or below the single-point ones
    relaxed = {r.candidate_id: r.energy_per_atom for r in store.relaxations(name) if r.ok}
    assert len(relaxed) >= 8
    for cand in store.candidates(name, ids=list(relaxed)):
        assert relaxed[cand.candidate_id] <= cand.single_point_energy + 1e-3


def test_single_point_needs_chgnet():
    with pytest.raises(ConfigError, match="acquisition.single_point needs relaxer.potential"):
        parse_config({**config().model_dump(mode="json"),
                      "relaxer": {"potential": "SevenNet"}})
