"""The campaign report: one self-contained HTML page, latent maps, CLI and artifacts."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from handmade_campaign import NAME, build_campaign

from matloop.results.export import export_campaign
from matloop.results.latent import MapCandidate, campaign_latent_maps, latent_map, project


class StandInEncoder:
    """A tiny 'generator' with a latent space: composition fractions and volume per atom."""

    name = "stand_in_vae"

    def encode(self, structures):
        rows = []
        for s in structures:
            comp = s.composition.fractional_composition
            rows.append([comp["Na"], comp["Cl"], s.volume / len(s) / 30.0, len(s) / 4.0])
        return np.array(rows)

    def sample(self, n, rng=None, conditions=None):
        from pymatgen.core import Lattice, Structure

        rng = rng or np.random.default_rng(0)
        return [Structure(Lattice.cubic(3 + rng.random() * 3), ["Na", "Cl"],
                          [[0, 0, 0], [0.5, 0.5, 0.5]]) for _ in range(n)]


@pytest.fixture(scope="module")
def campaign():
    return build_campaign(evaluate_round_2=True)


@pytest.fixture(scope="module")
def export(campaign, tmp_path_factory):
    return export_campaign(campaign.store, NAME, tmp_path_factory.mktemp("report"),
                           generators=[StandInEncoder(), object()])


def test_report_html_is_self_contained(export):
    page = (export / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 3  # hit rate, hull, latent map
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in page and "https://" not in page
    cifs = re.findall(r"href='(cifs/[^']+)'", page)
    assert cifs and all((export / c).is_file() for c in cifs)
    for word in ("Rounds", "Convex hull", "Latent maps", "Best candidates", "How sure",
                 "references.csv"):
        assert word in page
    # the evidence: 3 discoveries, only the DFT-relaxed one confirmed
    assert "3 discoveries (2 mlip-relaxed, 1 dft-relaxed): 1 confirmed" in page
    assert (export / "report.md").is_file()
    assert "dft-relaxed" in (export / "report.md").read_text()


def test_ml_only_campaign_calls_nothing_confirmed(tmp_path):
    run = build_campaign()  # round 2 (the DFT candidate) not evaluated
    out = export_campaign(run.store, NAME, tmp_path)
    page = (out / "report.html").read_text()
    assert "none confirmed" in page and "1 confirmed" not in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["confirmed"] == 0 and summary["leads"] == summary["discoveries"] > 0
    assert summary["hull_stale"] is False
    assert "latent" not in page.lower().replace("latent maps", "")  # no generators: no map


def test_latent_map_with_a_stand_in_encoder(tmp_path, campaign):
    from pymatgen.core import Structure

    encoder = StandInEncoder()
    candidates = [
        MapCandidate(Structure.from_dict(c.structure), c.round, e)
        for c, e in zip(campaign.store.candidates(NAME), [0.0, 0.3, None, 0.05, 0.2],
                        strict=True)
    ]
    training = encoder.sample(12, np.random.default_rng(1))
    for method, panels in (("pca", ("source", "round", "stability", "property")),
                           ("tsne", ("stability",))):
        path = latent_map(encoder, tmp_path / f"{method}.png", training=training,
                          samples=encoder.sample(8), candidates=candidates, method=method,
                          color_by=panels, property_name="volume",
                          training_properties=np.arange(12.0))
        assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match="unknown color_by"):
        latent_map(encoder, tmp_path / "x.png", candidates=candidates, color_by=("colour",))
    with pytest.raises(ValueError, match="unknown projection"):
        project(np.zeros((5, 4)), method="umap")
    maps = campaign_latent_maps(campaign.store, NAME, [encoder, object()], tmp_path)
    assert list(maps) == ["stand_in_vae"] and maps["stand_in_vae"].is_file()


def test_projection_is_deterministic():
    points = np.random.default_rng(3).normal(size=(30, 6))
    assert np.allclose(project(points), project(points.copy()))
    assert project(points[:, :2]).shape == (30, 2)


def test_cli_report_and_status(tmp_path):
    from typer.testing import CliRunner

    from matloop.cli import app

    uri = f"sqlite://{tmp_path}/store.db"
    build_campaign(uri, evaluate_round_2=True)
    runner = CliRunner()
    result = runner.invoke(app, ["report", NAME, "--store", uri, "--output",
                                 str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").is_file()
    result = runner.invoke(app, ["status", NAME, "--store", uri, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["summary"]
    assert summary["discoveries_by_evidence"]["dft-relaxed"] == 1
    assert summary["confirmed"] == 1
    result = runner.invoke(app, ["status", NAME, "--store", uri])
    assert "confirmed (DFT-relaxed, on the DFT hull): 1" in " ".join(result.output.split())
    result = runner.invoke(app, ["report", "nope", "--store", uri])
    assert result.exit_code == 2 and "no campaign named 'nope'" in result.output


def test_report_markdown_artifact_names_the_report(export, campaign):
    from matloop.flows.artifacts import report_markdown

    summary = json.loads((export / "summary.json").read_text())
    text = report_markdown(campaign, summary, export / "report.html")
    assert "file://" in text and "report.html" in text
    assert "| confirmed (DFT-relaxed, on the DFT hull) | **1**" in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium")
def test_report_renders_in_headless_chromium(export, tmp_path):
    from matloop.results.report import screenshot

    png = screenshot(export / "report.html", tmp_path / "report.png", height=2400)
    assert png is not None and png.stat().st_size > 50_000


def test_latent_map_of_a_real_crystal_vae(tmp_path):
    """The adapter gives matloop's crystal VAEs the encode(structures) protocol."""
    import torch
    from pymatgen.core import Lattice, Structure

    from matloop.generators.training import generator_class
    from matloop.results.latent import latent_encoder

    rng = np.random.default_rng(0)
    structures = [
        Structure(Lattice.cubic(rng.uniform(3.8, 4.3)), [a, "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        for a in rng.choice(["Sr", "Ba", "Ca"], 16)
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = generator_class("crystal_vae")(hidden=16, latent_dim=8, epochs=2, batch_size=8)
        gen.fit(structures)
        encoder = latent_encoder(gen)
        z = encoder.encode(structures[:3] + [Structure(Lattice.cubic(3), ["Na"], [[0, 0, 0]])])
        assert z.shape == (4, 8)
        assert np.isfinite(z[:3]).all() and np.isnan(z[3]).all()  # Na: not in its elements
        path = latent_map(encoder, tmp_path / "vae.png", training=structures,
                          samples=gen.sample(5, rng=np.random.default_rng(1)),
                          candidates=[MapCandidate(s, 1, 0.1) for s in structures[:4]])
        assert path.is_file()
    finally:
        torch.set_num_threads(threads)
    assert latent_encoder(object()) is None


def test_a_dft_verification_raises_the_evidence_level(tmp_path):
    from matloop.results.report import campaign_summary
    from matloop.store import DftDoc

    run = build_campaign()  # ML only so far
    hit = next(e for e in run.store.evaluations(NAME)
               if e.is_stable and e.is_novel and e.is_unique)
    run.store.save_dft([DftDoc(
        campaign=NAME, candidate_id=hit.candidate_id, round=1, ok=True, code="cp2k",
        kind="relax", evidence="dft-relaxed", energy_per_atom=-150.0, converged=True,
        matches_ml_structure=True,
    )])
    # DFT-relaxed but no DFT hull to place it on: not confirmed
    summary = campaign_summary(run.store, NAME)
    assert summary["confirmed"] == 0 and summary["dft_verified"] == 1
    (doc,) = run.store.dft_results(NAME)
    doc.dft_e_above_hull, doc.verdict = 0.0, "confirmed"
    run.store.save_dft([doc])
    summary = campaign_summary(run.store, NAME)
    assert summary["confirmed"] == 1 and summary["dft_verified"] == 1
    assert summary["discoveries_by_evidence"]["dft-relaxed"] == 1
    out = export_campaign(run.store, NAME, tmp_path)
    with (out / "candidates.csv").open() as handle:
        import csv

        row = next(r for r in csv.DictReader(handle) if r["candidate_id"] == hit.candidate_id)
    assert (row["evidence"], row["dft_evidence"], row["dft_code"]) == (
        "mlip-relaxed", "dft-relaxed", "cp2k")  # the hull energy stays the ML one


def test_a_failed_dft_run_is_never_counted_as_confirmed(tmp_path):
    from matloop.results.report import campaign_summary
    from matloop.store import DftDoc

    run = build_campaign()
    hit = next(e for e in run.store.evaluations(NAME)
               if e.is_stable and e.is_novel and e.is_unique)
    # a DFT relaxation that ran and failed (SCF not converged): stored, but no evidence
    run.store.save_dft([DftDoc(
        campaign=NAME, candidate_id=hit.candidate_id, round=1, ok=False, code="cp2k",
        kind="relax", evidence="dft-relaxed", energy_per_atom=None, converged=False,
        reason="SCF did not converge",
    )])
    summary = campaign_summary(run.store, NAME)
    assert summary["confirmed"] == 0 and summary["dft_verified"] == 0
    assert summary["leads"] == summary["discoveries"] >= 1
    assert summary["discoveries_by_evidence"].get("dft-relaxed", 0) == 0
    out = export_campaign(run.store, NAME, tmp_path)
    import csv

    with (out / "candidates.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["candidate_id"] == hit.candidate_id)
    assert row["evidence"] == "mlip-relaxed" and row["dft_ok"] == "False"
    assert "confirmed by DFT relaxation" not in (out / "report.html").read_text()
