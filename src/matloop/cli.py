"""The ``matloop`` command. Heavy imports happen inside each command, so ``--help`` is fast."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Closed-loop inverse design of inorganic crystals.",
)

ConfigArg = Annotated[Path, typer.Argument(help="Campaign YAML file", show_default=False)]
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Store URI (monty://PATH, mongodb://…, memory://)")
]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load(config_path: Path, store: str | None = None, output: str | None = None):
    from matloop.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as err:
        _fail(str(err))
    updates = {k: v for k, v in {"store": store, "output": output}.items() if v}
    if updates:
        from matloop.config import parse_config

        try:
            config = parse_config({**config.model_dump(), **updates}, source=str(config_path))
        except ConfigError as err:
            _fail(str(err))
    return config


def _store(uri: str):
    from matloop.store import MatloopStore, StoreURIError

    try:
        return MatloopStore(uri)
    except StoreURIError as err:
        _fail(str(err))


@app.command()
def run(
    config_path: ConfigArg,
    rounds: Annotated[int | None, typer.Option(help="Rounds to run now (default: budget.rounds)")]
    = None,
    store: StoreOpt = None,
    output: Annotated[str | None, typer.Option(help="Output folder (overrides the config)")]
    = None,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own logs")] = False,
) -> None:
    """Run (or resume) a campaign: rounds of generate → screen → relax → evaluate → learn."""
    if rounds is not None and rounds < 1:
        _fail(f"--rounds must be at least 1 (got {rounds})")
    config = _load(config_path, store, output)
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from matloop.export import export_campaign
    from matloop.flows.steps import CampaignRun, Progress as StepProgress
    from matloop.store import redact_uri

    console = Console()
    started = time.perf_counter()
    console.print(
        f"[bold]matloop[/] campaign [cyan]{config.name}[/] — "
        f"{'-'.join(config.chemical_space.elements)}, store {redact_uri(config.store)}"
    )
    bar = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    )
    state: dict = {}

    def relax_started(total: int) -> None:
        if total:
            bar.start()
            state["task"] = bar.add_task("relaxing", total=total)

    def relax_advanced(done: int, total: int, cid: str) -> None:
        if "task" in state:
            bar.update(state["task"], completed=done, description=f"relaxing {cid}")
            if done >= total:
                bar.stop()
                bar.remove_task(state.pop("task"))

    progress = StepProgress(
        message=lambda text: console.print(f"  {text}"),
        relax_started=relax_started,
        relax_advanced=relax_advanced,
    )
    from matloop.flows.steps import CampaignMismatchError

    campaign = CampaignRun(config, progress=progress)
    if not config.seed_data.files and not config.seed_data.materials_project:
        console.print(
            "  [yellow]no seed data: 'novel' means new to this campaign only; give known "
            "crystals under seed_data to judge novelty against them[/]"
        )
    try:
        campaign.ensure_campaign()
    except CampaignMismatchError as err:
        _fail(str(err))
    from matloop.flows.campaign import campaign_flow, register_run

    register_run(campaign)
    result = campaign_flow(config.model_dump(mode="json"), rounds=rounds)
    out = export_campaign(campaign.store, config.name, config.output_dir)
    _print_status(console, campaign.store, config.name)
    elapsed = time.perf_counter() - started
    console.print(
        f"ran round(s) {result['rounds_run'] or 'none'} in {elapsed:.0f} s"
        + (f"; campaign stopped: {result['stop_reason']}" if result["stop_reason"] else "")
    )
    console.print(f"results in [bold]{out}[/] (report.md, candidates.csv, cifs/, plots/)")


def _status_rows(store, name: str) -> list[dict]:
    rows = []
    for doc in store.rounds(name):
        m = doc.metrics
        rows.append({
            "round": doc.round,
            "status": doc.status,
            "proposed": m.get("proposed", 0),
            "rejected": m.get("rejected", 0),
            "relaxed": m.get("relaxed", 0),
            "failed": m.get("failed", 0),
            "evaluated": m.get("evaluated", 0),
            "stable": m.get("stable", 0),
            "novel": m.get("novel", 0),
            "hits": m.get("hits", 0),
            "hit_rate": round(m.get("hit_rate", 0.0), 4),
        })
    return rows


def _print_status(console, store, name: str) -> None:
    from rich.table import Table

    from rich import box

    table = Table(title=f"{name}: rounds (* = not finished)", box=box.SIMPLE_HEAD)
    columns = ["round", "proposed", "rejected", "relaxed", "failed", "evaluated", "stable",
               "novel", "hits", "hit_rate"]
    headers = ["round", "prop", "rej", "relaxed", "failed", "eval", "stable", "novel", "hits",
               "hit %"]
    for header in headers:
        table.add_column(header, justify="right")
    for row in _status_rows(store, name):
        cells = [f"{row['hit_rate']:.0%}" if c == "hit_rate" else str(row[c]) for c in columns]
        if row["status"] != "completed":
            cells[0] += "*"
        table.add_row(*cells)
    console.print(table)
    best = sorted(store.evaluations(name), key=lambda e: e.e_above_hull)[:8]
    if best:
        top = Table(title="best candidates (energy above hull, eV/atom)", box=box.SIMPLE_HEAD)
        for column in ["candidate", "formula", "round", "space group", "E_hull", "novel"]:
            top.add_column(column)
        for e in best:
            top.add_row(e.candidate_id, e.formula, str(e.round), e.spacegroup or "",
                        f"{e.e_above_hull:.3f}", "yes" if e.is_novel else "no")
        console.print(top)


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    store: Annotated[str, typer.Option(help="Store URI")] = "monty://./matloop-store",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Per round: proposed, relaxed, failed, stable, novel, hit rate."""
    db = _store(store)
    campaign = db.get_campaign(name)
    if campaign is None:
        known = ", ".join(c.campaign for c in db.campaigns()) or "none"
        _fail(f"no campaign named {name!r} in this store (campaigns: {known})")
    if as_json:
        payload = {
            "campaign": name,
            "status": campaign.status,
            "stop_reason": campaign.stop_reason,
            "hull_scheme": campaign.hull_scheme,
            "candidates": db.status_counts(name),
            "rounds": _status_rows(db, name),
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    from rich.console import Console

    console = Console()
    console.print(f"campaign [cyan]{name}[/]: {campaign.status}"
                  + (f" ({campaign.stop_reason})" if campaign.stop_reason else ""))
    counts = db.status_counts(name)
    console.print("candidates: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    _print_status(console, db, name)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    output: Annotated[Path, typer.Option("--output", help="Folder to write")],
    store: Annotated[str, typer.Option(help="Store URI")] = "monty://./matloop-store",
) -> None:
    """Write candidates.csv, rounds.csv, references.csv, cifs/, plots/ and report.md."""
    from matloop.export import export_campaign

    try:
        out = export_campaign(_store(store), name, output)
    except KeyError as err:
        _fail(str(err.args[0]))
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
