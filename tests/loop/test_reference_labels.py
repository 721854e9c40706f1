"""Before round 1 the references (elements and seed crystals, relaxed with the campaign's
potential) are placed on their own hull: their e_above_hull are the surrogate's first labels,
so the first round ranks its candidates instead of picking at random. With fewer seed
compounds than the surrogate needs, round 1 stays a random pick."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matloop.config import parse_config
from matloop.loop import CampaignRun
from matloop.loop.screen import MIN_TRAINING_POINTS

pytestmark = pytest.mark.slow


def na_cl_polymorphs() -> dict[str, Structure]:
    half = 5.64 / 2
    fcc = Lattice([[0, half, half], [half, 0, half], [half, half, 0]])
    zb = 6.2 / 2
    return {
        "rock-salt": Structure(fcc, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "cscl": Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "zincblende": Structure(Lattice([[0, zb, zb], [zb, 0, zb], [zb, zb, 0]]),
                                ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "Na3Cl": Structure(Lattice.cubic(4.6), ["Cl", "Na", "Na", "Na"],
                           [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "wurtzite": Structure(Lattice.hexagonal(4.4, 7.2), ["Na", "Na", "Cl", "Cl"],
                              [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5],
                               [1 / 3, 2 / 3, 0.375], [2 / 3, 1 / 3, 0.875]]),
        "NaCl3": Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl", "Cl"],
                           [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    }


def seeded_config(tmp_path, crystals: dict[str, Structure]):
    import pandas as pd

    seeds = tmp_path / "known.csv"
    pd.DataFrame([{"material_id": name, "cif": s.to(fmt="cif")}
                  for name, s in crystals.items()]).to_csv(seeds, index=False)
    return parse_config({
        "name": "labelled",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": [{"name": "random_symmetric"}],
        "budget": {"candidates_per_round": 8, "relaxations_per_round": 2},
        "relaxer": {"steps": 100},
        "seed_data": {"files": [{"path": str(seeds)}]},
        "store": "memory://",
        "seed": 0,
    })


def test_references_label_the_first_rounds_surrogate(tmp_path):
    config = seeded_config(tmp_path, na_cl_polymorphs())
    run = CampaignRun(config)
    run.prepare_references()
    labels = run.store.get_campaign("labelled").reference_e_above_hull
    assert set(labels) == {r.reference_id for r in run.references()}
    assert len(labels) >= MIN_TRAINING_POINTS
    assert labels["element:Na"] == pytest.approx(0, abs=1e-6)
    assert labels["seed:file:known.csv:rock-salt"] == pytest.approx(0, abs=1e-6)
    # the polymorphs lie above rock salt, as CHGNet places them
    assert labels["seed:file:known.csv:cscl"] > 0.005
    assert labels["seed:file:known.csv:zincblende"] > 0.005

    run.start_round()
    run.generate(1)
    run.screen(1)
    acquisition = run.store.get_round("labelled", 1).metrics.get("acquisition")
    assert acquisition == config.acquisition.strategy, acquisition


def test_too_few_seed_compounds_leave_round_one_random(tmp_path):
    crystals = na_cl_polymorphs()
    few = {name: crystals[name] for name in ("rock-salt", "cscl")}
    run = CampaignRun(seeded_config(tmp_path, few))
    run.prepare_references()
    assert len(run.references()) == 4  # Na, Cl and the two seeds: made, but not labels
    assert run.store.get_campaign("labelled").reference_e_above_hull == {}
    run.start_round()
    run.generate(1)
    run.screen(1)
    acquisition = run.store.get_round("labelled", 1).metrics.get("acquisition")
    assert acquisition.startswith("random"), acquisition
