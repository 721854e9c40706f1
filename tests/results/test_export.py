"""The export: evidence recorded and exported, and a hull that recomputes from the export
alone (plain pymatgen over references.csv)."""

from __future__ import annotations

import csv
import json

import pytest
from handmade_campaign import NAME, build_campaign

from matloop.results.export import export_campaign, recompute_hull, reference_version_of


@pytest.fixture(scope="module")
def evaluated():
    """Both rounds evaluated."""
    return build_campaign(evaluate_round_2=True)


@pytest.fixture(scope="module")
def evaluated_export(evaluated, tmp_path_factory):
    return export_campaign(evaluated.store, NAME, tmp_path_factory.mktemp("export"))


def _csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _assert_hull_recomputes(out):
    """Every exported e_above_hull within 1 meV/atom of a hull rebuilt from references.csv
    with plain pymatgen, and the reference-set version recomputed from the same file."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    references = _csv(out / "references.csv")
    entries = {
        row["entry_id"]: PDEntry(Composition(row["formula"]), float(row["corrected_energy"]))
        for row in references
    }
    pd = PhaseDiagram(list(entries.values()))
    candidates = [r for r in _csv(out / "candidates.csv") if r["e_above_hull"]]
    assert candidates
    for row in candidates:
        recomputed = pd.get_e_above_hull(entries[row["candidate_id"]])
        assert abs(recomputed - float(row["e_above_hull"])) < 1e-3, row["candidate_id"]
    summary = json.loads((out / "summary.json").read_text())
    version = reference_version_of(references, summary["hull_scheme"])
    assert {r["reference_set_version"] for r in candidates} == {version}
    assert summary["reference_set_version"] == version and not summary["hull_stale"]
    return references, candidates


def test_evaluate_records_evidence_convergence_and_hull_version(evaluated):
    relaxations = {r.candidate_id: r for r in evaluated.store.relaxations(NAME)}
    evaluations = evaluated.store.evaluations(NAME)
    assert len(evaluations) == 5
    versions = {e.reference_set_version for e in evaluations}
    assert len(versions) == 1 and None not in versions  # every one refreshed to the last hull
    for ev in evaluations:
        relax = relaxations[ev.candidate_id]
        assert (ev.max_force, ev.n_steps, ev.converged) == (
            relax.max_force, relax.n_steps, relax.converged)
        assert ev.settings == {"fmax": 0.05, "steps": 300, "relax_cell": True}
        assert ev.n_hull_entries == 2 + 1 + 5  # elements, one seed crystal, candidates
        assert ev.hull_version == 2
        if ev.formula == "NaCl2":
            assert (ev.evidence, ev.potential) == ("dft-relaxed", "CP2K PBE")
        else:
            assert ev.evidence == "mlip-relaxed" and ev.potential.startswith("CHGNet ")


def test_references_csv_recomputes_every_e_above_hull(evaluated_export):
    references, _ = _assert_hull_recomputes(evaluated_export)
    assert {r["kind"] for r in references} == {"reference", "candidate"}
    chloride = next(r for r in references if r["reduced_formula"] == "NaCl")
    # CHGNet learned MP2020-corrected energies: its hull takes them as they are (correcting
    # again would count the anion correction twice); SevenNet's raw ones get MP2020
    assert float(chloride["correction"]) == 0
    assert float(chloride["energy"]) == pytest.approx(float(chloride["corrected_energy"]))
    assert {r["correction_scheme"] for r in references} == {"none"}
    # matloop's own helper agrees
    _pd, e_hull = recompute_hull(evaluated_export / "references.csv")
    assert all(abs(e_hull[r["entry_id"]] - float(r["e_above_hull"])) < 1e-6
               for r in references)


def test_an_unevaluated_candidate_is_not_in_the_hull(tmp_path):
    run = build_campaign()  # round 2 relaxed but not evaluated
    out = export_campaign(run.store, NAME, tmp_path)
    references, candidates = _assert_hull_recomputes(out)
    assert len(references) == 2 + 1 + 3
    assert {r["formula"] for r in candidates} == {"NaCl", "Na2Cl"}


def test_candidates_csv_carries_evidence_and_summary_counts_levels(evaluated_export):
    rows = {r["formula"]: r for r in _csv(evaluated_export / "candidates.csv")
            if r["e_above_hull"]}
    assert rows["NaCl2"]["evidence"] == "dft-relaxed"
    assert rows["Na2Cl"]["evidence"] == "mlip-relaxed"
    for row in rows.values():
        assert row["potential"] and row["max_force"] and row["n_steps"]
        assert row["converged"] == "True"
    summary = json.loads((evaluated_export / "summary.json").read_text())
    hits = summary["discoveries_by_evidence"]
    assert summary["discoveries"] == sum(hits.values()) == 3
    assert hits == {"mlip-relaxed": 2, "dft-single-point": 0, "dft-relaxed": 1}
    assert summary["confirmed"] == 1 and summary["leads"] == 2  # ML-only is never confirmed


def test_novelty_is_judged_against_the_reference_and_exported(evaluated_export):
    """Na-Cl holds one reference crystal: the candidates' novelty is judged (novel), each
    row says what was searched; nothing is unjudged, so no 'novelty unknown' count."""
    rows = [r for r in _csv(evaluated_export / "candidates.csv") if r["e_above_hull"]]
    assert {r["novelty"] for r in rows} == {"novel"}
    reference = json.loads(rows[0]["novelty_reference"])
    assert reference == {"sets": ["file:known.csv"], "chemsys": "Cl-Na", "n_chemsys": 1,
                         "n_subsystems": {"Cl": 0, "Na": 0}}
    summary = json.loads((evaluated_export / "summary.json").read_text())
    assert summary["novelty"] == {"novel": 5, "known": 0, "unjudged": 0}
    assert summary["stable_novelty_unknown"] == 0
    assert summary["novelty_reference_sets"] == ["file:known.csv"]


def test_without_a_reference_crystal_nothing_is_novel(tmp_path):
    """The same campaign with no reference crystal of Na-Cl: rock-salt NaCl and the others
    are 'unjudged', no discovery is claimed, and the stable ones are counted as 'stable,
    novelty unknown' in summary.json, rounds.csv, the report and status --json."""
    from handmade_campaign import SEED_ID
    from typer.testing import CliRunner

    from matloop.cli import app

    uri = f"monty://{tmp_path}/store"
    run = build_campaign(uri, evaluate_round_2=True, seed=False)
    assert SEED_ID not in run.reference_ids()
    out = export_campaign(run.store, NAME, tmp_path / "out")
    rows = [r for r in _csv(out / "candidates.csv") if r["e_above_hull"]]
    assert rows and {r["novelty"] for r in rows} == {"unjudged"}
    assert {r["is_novel"] for r in rows} == {"False"}
    assert all(json.loads(r["novelty_reference"])["n_chemsys"] == 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    n_stable = sum(r["is_stable"] == "True" and r["is_unique"] == "True" for r in rows)
    assert summary["discoveries"] == 0 and summary["confirmed"] == 0
    assert summary["stable_novelty_unknown"] == n_stable > 0
    assert sum(int(r["stable_novelty_unknown"]) for r in _csv(out / "rounds.csv")) == n_stable
    assert "stable with novelty unknown" in (out / "report.md").read_text()
    assert "stable, novelty unknown" in (out / "report.html").read_text()
    result = CliRunner().invoke(app, ["status", NAME, "--store", uri, "--json"])
    payload = json.loads(result.output)
    assert payload["summary"]["stable_novelty_unknown"] == n_stable
    assert sum(r["stable_novelty_unknown"] for r in payload["rounds"]) == n_stable


@pytest.mark.slow
def test_real_chgnet_campaign_hull_recomputes_from_the_export(tmp_path):
    """Two rounds of a tiny Na–Cl campaign with real CHGNet relaxations."""
    from matloop.config import parse_config
    from matloop.loop import CampaignRun

    config = parse_config({
        "name": "hull-na-cl",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "budget": {"rounds": 2, "candidates_per_round": 6, "relaxations_per_round": 2},
        "relaxer": {"steps": 100},
        "store": "memory://",
        "seed": 5,
    })
    run = CampaignRun(config)
    run.prepare_references()
    run.run_round()
    run.run_round()
    out = export_campaign(run.store, config.name, tmp_path)
    references, candidates = _assert_hull_recomputes(out)
    assert len(candidates) >= 2
    assert all(r["evidence"] == "mlip-relaxed" for r in candidates)
    assert (out / "report.html").is_file()


def test_cifs_hold_every_near_stable_relaxed_structure_as_relaxed(evaluated, evaluated_export,
                                                                  tmp_path):
    """cifs/: one CIF per evaluated candidate within 0.1 eV/atom of the hull, reading back
    to its relaxed structure; with cif_symprec, symmetrized (the same crystal)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from matloop.results.export import NEAR_STABLE

    near = {e.candidate_id for e in evaluated.store.evaluations(NAME)
            if e.e_above_hull <= NEAR_STABLE}
    assert near and {p.stem for p in (evaluated_export / "cifs").glob("*.cif")} == near
    relaxed = {r.candidate_id: Structure.from_dict(r.structure)
               for r in evaluated.store.relaxations(NAME, ids=sorted(near))}
    for cid in near:
        back = Structure.from_file(evaluated_export / "cifs" / f"{cid}.cif")
        assert len(back) == len(relaxed[cid])
        assert back.lattice.abc == pytest.approx(relaxed[cid].lattice.abc, abs=1e-5)
    symmetrized = export_campaign(evaluated.store, NAME, tmp_path / "sym", cif_symprec=0.1)
    for cid in near:
        text = (symmetrized / "cifs" / f"{cid}.cif").read_text()
        assert StructureMatcher().fit(Structure.from_str(text, fmt="cif"), relaxed[cid])
