"""What each round shows in the Prefect UI: metrics table, best candidates, a summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matloop.flows.steps import CampaignRun

METRIC_KEYS = (
    "proposed", "rejected", "selected", "relaxed", "failed", "evaluated", "stable", "novel",
    "hits", "hit_rate", "best_e_above_hull", "surrogate_mae",
)


def _key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def round_rows(run: CampaignRun) -> list[dict]:
    rows = []
    for doc in run.store.rounds(run.name):
        row = {"round": doc.round, "status": doc.status}
        for key in METRIC_KEYS:
            value = doc.metrics.get(key)
            row[key] = round(value, 4) if isinstance(value, float) else value
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
            "novel": e.is_novel,
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
        f"{m.get('novel', 0)}, hits **{m.get('hits', 0)}** "
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
