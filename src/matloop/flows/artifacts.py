"""What each round shows in the Prefect UI: metrics table, best candidates, a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matloop.loop import CampaignRun

METRIC_KEYS = (
    "proposed", "rejected", "selected", "relaxed", "failed", "evaluated", "stable", "novel",
    "stable_novelty_unknown", "hits", "hit_rate", "best_e_above_hull", "surrogate_mae",
)


def _key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def round_rows(run: CampaignRun) -> list[dict]:
    """Metrics and loop diagnostics (allocation, hit rate per generator, repeats,
    surrogate MAE and calibration) of every round, as flat cells."""
    from matloop.results.rows import diagnostic_cells

    rows = []
    for doc in run.store.rounds(run.name):
        row = {"round": doc.round, "status": doc.status}
        for key in METRIC_KEYS:
            value = doc.metrics.get(key)
            row[key] = round(value, 4) if isinstance(value, float) else value
        for key, value in diagnostic_cells(doc.metrics).items():
            row.setdefault(key, round(value, 4) if isinstance(value, float) else value)
        rows.append(row)
    return rows


def best_rows(run: CampaignRun, limit: int = 10) -> list[dict]:
    evaluations = sorted(run.store.evaluations(run.name), key=lambda e: e.e_above_hull)
    return [
        {
            "candidate_id": e.candidate_id,
            "formula": e.formula,
            "round": e.round,
            "spacegroup": e.spacegroup,
            "e_above_hull": round(e.e_above_hull, 4),
            "novelty": e.novelty or ("novel" if e.is_novel else "known"),
            "unique": e.is_unique,
            "evidence": e.evidence,
        }
        for e in evaluations[:limit]
    ]


def summary_markdown(run: CampaignRun, round_: int) -> str:
    doc = run.store.get_round(run.name, round_)
    m = doc.metrics if doc else {}
    threshold = run.config.objective.stability_threshold
    lines = [
        f"# {run.name}: round {round_}",
        "",
        f"- proposed **{m.get('proposed', 0)}**, rejected {m.get('rejected', 0)}, "
        f"selected {m.get('selected', 0)} ({m.get('acquisition', '')})",
        f"- relaxed **{m.get('relaxed', 0)}**, failed {m.get('failed', 0)} "
        f"({run.potential})",
        f"- within {threshold} eV/atom of the hull: **{m.get('stable', 0)}**, novel "
        f"{m.get('novel', 0)}, stable with novelty unknown "
        f"**{m.get('stable_novelty_unknown', 0)}**, hits **{m.get('hits', 0)}** "
        f"(hit rate {m.get('hit_rate', 0.0):.0%})",
        f"- hull: {m.get('hull_scheme', run.hull_scheme)}",
        f"- exported results: `{run.config.output_dir}` (report.md, candidates.csv, "
        "plots/hit_rate.png, plots/hull.png)",
    ]
    return "\n".join(lines)


def publish_round_artifacts(run: CampaignRun, round_: int) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    base = _key(run.name)
    create_table_artifact(
        key=f"{base}-rounds", table=round_rows(run),
        description=f"{run.name}: metrics per round",
    )
    create_table_artifact(
        key=f"{base}-best", table=best_rows(run) or [{"candidate_id": "none yet"}],
        description=f"{run.name}: best candidates by energy above hull",
    )
    create_markdown_artifact(
        key=f"{base}-summary", markdown=summary_markdown(run, round_),
        description=f"{run.name}: round {round_} summary",
    )


def report_markdown(run: CampaignRun, summary: dict, report: Path) -> str:
    """The campaign's key numbers and where its report is, for the campaign flow run."""
    s = summary
    by_evidence = ", ".join(f"{level} {n}" for level, n in s["discoveries_by_evidence"].items())
    best = s.get("best") or {}
    lines = [
        f"# {run.name}: campaign report",
        "",
        f"**[Open the report]({report.resolve().as_uri()})** — `{report.resolve()}`",
        "",
        "| | |",
        "|---|---|",
        f"| rounds completed | {s['rounds_completed']} ({s['status']}"
        + (f": {s['stop_reason']}" if s["stop_reason"] else "") + ") |",
        f"| proposed / relaxed / failed | {s['proposed']} / {s['relaxed']} / {s['failed']} |",
        f"| discoveries (novel, ≤ {s['stability_threshold']} eV/atom) | "
        f"**{s['discoveries']}** (hit rate {s['hit_rate']:.0%}) |",
        f"| stable, novelty unknown | **{s.get('stable_novelty_unknown', 0)}** (no reference "
        "crystal of their chemical system: not counted as discoveries) |",
        f"| by evidence | {by_evidence} |",
        f"| confirmed (DFT-relaxed, on the DFT hull) | **{s['confirmed']}** — the other "
        f"{s['leads']} are leads; refuted by DFT: {s.get('dft_refuted', 0)} |",
        f"| best | {best.get('formula', '–')} "
        + (f"{best['e_above_hull']:.3f} eV/atom above hull |" if best else "|"),
        f"| energies | {s['potential']}, {s['converged']} of {s['relaxed']} converged |",
        f"| hull | {s['hull_scheme']}, {s['n_hull_entries']} entries, reference set "
        f"`{s['reference_set_version']}` |",
    ]
    return "\n".join(lines)


def publish_report_artifacts(run: CampaignRun, output: Path) -> None:
    """Key numbers (markdown) and a link to ``report.html`` on the campaign flow run."""
    import json

    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    base = _key(run.name)
    report = Path(output) / "report.html"
    summary = json.loads((Path(output) / "summary.json").read_text())
    create_markdown_artifact(
        key=f"{base}-report", markdown=report_markdown(run, summary, report),
        description=f"{run.name}: key numbers of the campaign",
    )
    create_link_artifact(
        key=f"{base}-report-link", link=report.resolve().as_uri(),
        link_text=f"{run.name} report (report.html)",
        description=f"{run.name}: the campaign report, one self-contained HTML page",
    )
