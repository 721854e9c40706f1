"""A replay campaign: the whole loop, with "relaxations" answered from a labelled table.

perov-5 rows stand in for relaxations (``relaxer: {potential: replay}``), the ``table_rows``
generator proposes the table's rows, and the ``joint`` acquisition ranks candidates by
P(stable) x P(dir_gap in the window). Checks that the answers are the table's, that they are
labelled as table lookups (never as ML or DFT evidence), that joint acquisition is what chose,
and that a bad replay configuration is refused with the field named.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from matloop.config import ConfigError, parse_config
from matloop.loop import CampaignRun
from matloop.store import CandidateStatus, MatloopStore

WINDOW = (1.5, 2.5)


@pytest.fixture(scope="module")
def table(perov5_head):
    """The first 300 rows of perov-5 (a test-local file; the data stays in ../shared)."""
    return perov5_head(300)


def config(table, **overrides) -> dict:
    data = {
        "name": "replay-test",
        "chemical_space": {"elements": table.elements, "max_atoms": 5},
        "objective": {"stability_threshold": 0.1,
                      "property": {"name": "dir_gap", "min": WINDOW[0], "max": WINDOW[1]}},
        "generators": [{"name": "table_rows", "settings": {"path": str(table.path)}}],
        "relaxer": {"potential": "replay",
                    "replay": {"path": str(table.path), "energy_column": "heat_ref",
                               "property_columns": ["dir_gap"]}},
        "budget": {"rounds": 3, "candidates_per_round": 60, "relaxations_per_round": 10},
        "acquisition": {"strategy": "joint", "ensemble_size": 4},
        "store": "memory://",
    }
    data.update(overrides)
    return data


def test_replay_campaign_answers_from_the_table(table):
    frame = pd.read_csv(table.path, dtype={"material_id": str}).set_index("material_id")
    run = CampaignRun(parse_config(config(table)), store=MatloopStore("memory://"))
    run.prepare_references()
    assert {r.energy_per_atom for r in run.references()} == {0.0}  # formation energies
    rounds = [run.run_round() for _ in range(3)]

    relaxations = run.store.relaxations(run.name)
    assert len(relaxations) == 30
    oracle = run.oracle
    for r in relaxations:
        assert r.ok and r.potential == f"replay:{oracle.name}"
        row = oracle.ids.index(_row_id(oracle, r.structure))
        assert r.energy_per_atom == pytest.approx(frame.loc[oracle.ids[row], "heat_ref"])
        assert r.properties["dir_gap"] == pytest.approx(frame.loc[oracle.ids[row], "dir_gap"])
    evaluations = run.store.evaluations(run.name)
    assert {e.evidence for e in evaluations} == {"table-lookup"}
    assert all("dir_gap" in e.properties for e in evaluations)
    # heat_ref is a formation energy, so with elements at 0 a crystal's e_above_hull is at
    # most its heat_ref (less only when it is below zero: then it may sit on the hull)
    for e in evaluations:
        assert 0.0 <= e.e_above_hull <= max(e.energy_per_atom, 0.0) + 1e-9

    assert rounds[0].metrics["acquisition"].startswith("random")
    for doc in rounds[1:]:
        assert doc.metrics["acquisition"] == "joint (stability x dir_gap window)"
        assert 0.0 <= doc.metrics["surrogate_within_1sigma"] <= doc.metrics[
            "surrogate_within_2sigma"] <= 1.0


def test_joint_acquisition_picks_the_most_probable_hits(table):
    run = CampaignRun(parse_config(config(table)), store=MatloopStore("memory://"))
    run.prepare_references()
    run.run_round()
    run.run_round()
    # round 2 scored its own proposals and round 1's leftovers, all of them afresh
    # (round 1 chose at random: its picks carry no score)
    scored = [c for c in run.store.candidates(run.name)
              if c.acquisition_score is not None and np.isfinite(c.acquisition_score)]
    chosen = [c for c in scored if c.selected_round == 2]
    waiting = [c for c in scored if c.status == CandidateStatus.proposed]
    assert len(chosen) == 10 and waiting
    # scores are -P(hit): every chosen candidate is at least as likely a hit as any left
    assert max(c.acquisition_score for c in chosen) <= min(c.acquisition_score for c in waiting)
    assert all(-1.0 <= c.acquisition_score <= 0.0 for c in scored)

    # the pool is not rewritten every round: a candidate left waiting since round 1 records
    # that once, while its scores follow each round's surrogate
    before = {c.candidate_id: c for c in waiting}
    run.run_round()
    still = [c for c in run.store.candidates(run.name, ids=list(before))
             if c.status == CandidateStatus.proposed]
    assert still
    for cand in still:
        assert [h.reason for h in cand.history].count("waiting in the pool") == 1
    assert any(c.acquisition_score != before[c.candidate_id].acquisition_score for c in still)


def _row_id(oracle, structure_dict) -> str:
    from pymatgen.core import Structure

    row = oracle.lookup(Structure.from_dict(structure_dict))
    assert row is not None
    return oracle.ids[row]


@pytest.mark.parametrize(
    ("relaxer", "message"),
    [
        ({"potential": "replay"}, "relaxer: potential: replay needs a table"),
        ({"potential": "CHGNet", "replay": {"path": "x.csv", "energy_column": "e"}},
         "relaxer: relaxer.replay is only used with potential: replay"),
    ],
)
def test_bad_replay_config_is_refused(table, relaxer, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(config(table, relaxer=relaxer))


def test_missing_or_wrong_replay_table_is_a_preflight_problem(table):
    """Validation reads no file; the pre-flight checks the table exists and has columns."""
    from matloop.preflight import check_replay_table

    missing = parse_config(config(table, relaxer={
        "potential": "replay", "replay": {"path": "missing.csv", "energy_column": "e"}}))
    (problem,) = check_replay_table(missing.relaxer.replay)
    assert str(problem).startswith("relaxer.replay.path: missing.csv: no such file")
    wrong = parse_config(config(table, relaxer={
        "potential": "replay", "replay": {"path": str(table.path), "energy_column": "nope"}}))
    (problem,) = check_replay_table(wrong.relaxer.replay)
    assert "no column(s) nope" in str(problem)


def test_replay_table_with_a_potential_is_refused(table):
    relaxer = {"potential": "CHGNet",
               "replay": {"path": str(table.path), "energy_column": "heat_ref"}}
    with pytest.raises(ConfigError, match="only used with potential: replay, not CHGNet"):
        parse_config(config(table, relaxer=relaxer))


def test_table_rows_never_repeats_and_stays_in_space(table):
    from pymatgen.core import Structure

    from matloop.generators.base import ChemicalSpace
    from matloop.generators.table import TableRows

    cifs = pd.read_csv(table.path)["cif"]
    space = sorted({el.symbol for cif in cifs[:40]
                    for el in Structure.from_str(cif, fmt="cif").composition})
    gen = TableRows(ChemicalSpace(space, 5), path=str(table.path))
    every = gen.sample(5, rng=np.random.default_rng(0))
    every += gen.sample(1000, rng=np.random.default_rng(1))
    assert 40 <= len(every) < len(cifs)  # at least the 40 rows the space was built from
    assert all({el.symbol for el in s.composition} <= set(space) for s in every)
    keys = {(s.composition.reduced_formula, round(s.volume, 4)) for s in every}
    assert len(keys) == len(every)  # no row twice
    assert gen.sample(3) == []  # the table ran out
