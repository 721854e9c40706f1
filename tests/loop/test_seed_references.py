"""Seed crystals become hull references (relaxed once, with the campaign's potential) and
the baseline for novelty; unreadable rows are reported, not dropped silently."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matloop.config import parse_config
from matloop.loop import CampaignRun, Progress

pytestmark = pytest.mark.slow


def test_seed_crystals_are_relaxed_once_and_judge_novelty(tmp_path):
    import pandas as pd

    half = 5.64 / 2  # primitive fcc cell of rock-salt NaCl
    rocksalt = Structure(Lattice([[0, half, half], [half, 0, half], [half, half, 0]]),
                         ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    outside = Structure(Lattice.cubic(4.2), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    seeds = tmp_path / "known.csv"
    pd.DataFrame([
        {"material_id": "rs-NaCl", "cif": rocksalt.to(fmt="cif")},
        {"material_id": "KCl", "cif": outside.to(fmt="cif")},
        {"material_id": "junk", "cif": "not a cif at all"},
    ]).to_csv(seeds, index=False)
    config = parse_config({
        "name": "seeded",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": [{"name": "prototype_substitution"}],
        "budget": {"candidates_per_round": 6, "relaxations_per_round": 2},
        "relaxer": {"steps": 150},
        "seed_data": {"files": [{"path": str(seeds)}]},
        "store": "memory://",
    })
    messages: list[str] = []
    run = CampaignRun(config, progress=Progress(message=messages.append))
    result = run.prepare_references()
    assert result.counts == {"elements": 2, "seeds": 1, "problems": 1}
    assert any("junk" in m for m in messages), messages
    refs = {r.reference_id: r for r in run.references()}
    assert set(refs) == {"element:Na", "element:Cl", "seed:file:known.csv:rs-NaCl"}
    assert refs["seed:file:known.csv:rs-NaCl"].energy_per_atom < -3.0
    assert run.prepare_references().skipped, "references must be relaxed only once"
    # the pre-flight counts what the campaign reads; the stored counts reach summary.json
    from matloop.preflight import count_seed_crystals
    from matloop.results.report import campaign_summary

    assert count_seed_crystals(config).per_system == {"Cl-Na": 1}
    assert run.store.get_campaign("seeded").seed_systems == {"Cl-Na": 1}
    coverage = campaign_summary(run.store, "seeded")["seed_coverage"]
    assert coverage == {"systems": {"Cl-Na": 1}, "empty": [], "warning": None}

    # prototype substitution knows rock-salt NaCl from the seeds and does not propose it
    run.start_round()
    generated = run.generate(1)
    assert generated.counts["known_skipped_by_generator"]["prototype_substitution"] >= 1
    stored = run.store.candidates("seeded")
    assert stored and all(c.prototype != "rock_salt" for c in stored)
    # a proposal of it that still comes (a learned generator) is rejected by the screen
    from matloop.identity import candidate_id
    from matloop.loop.generate import candidate_doc

    near_copy = rocksalt.copy()
    near_copy.scale_lattice(rocksalt.volume * 1.02)
    doc = candidate_doc("seeded", near_copy, 1, run.generators()[0][1], candidate_id)
    run.store.add_candidates([doc])
    run.screen(1)
    rejected = run.store.candidates("seeded", status="rejected")
    assert any(c.reason and "rs-NaCl" in c.reason for c in rejected), [
        (c.formula, c.prototype, c.reason) for c in run.store.candidates("seeded")
    ]
