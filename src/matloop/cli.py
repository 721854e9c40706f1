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

    if "${prefect-secret:" in uri:
        import matloop.flows  # noqa: F401  registers the Prefect Secret resolver
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
    """Run (or resume) a campaign: rounds of generate, screen, relax, evaluate, verify, learn."""
    if rounds is not None and rounds < 1:
        _fail(f"--rounds must be at least 1 (got {rounds})")
    config = _load(config_path, store, output)
    from matloop.secrets import hide_literal_password

    # a password typed into the URI must not reach flow parameters (shown in the Prefect UI)
    config = config.model_copy(update={"store": hide_literal_password(config.store)})
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from matloop.loop import CampaignRun
    from matloop.loop import Progress as StepProgress
    from matloop.results.export import export_campaign
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
    from matloop.loop import CampaignMismatchError
    from matloop.store import StoreURIError

    try:
        campaign = CampaignRun(config, progress=progress)
    except StoreURIError as err:
        _fail(str(err))
    if not config.seed_data.files and not config.seed_data.materials_project:
        console.print(
            "  [yellow]no seed data: 'novel' means new to this campaign only; give known "
            "crystals under seed_data to judge novelty against them[/]"
        )
    try:
        campaign.ensure_campaign()
    except CampaignMismatchError as err:
        _fail(str(err))
    from matloop.flows.campaign import campaign_flow

    result = campaign_flow(config.model_dump(mode="json"), rounds=rounds, run=campaign)
    # the flow's last task writes the export and report.html; export here if it could not
    out = result.get("output") or export_campaign(campaign.store, config.name,
                                                  config.output_dir)
    _print_status(console, campaign.store, config.name)
    elapsed = time.perf_counter() - started
    console.print(
        f"ran round(s) {result['rounds_run'] or 'none'} in {elapsed:.0f} s"
        + (f"; campaign stopped: {result['stop_reason']}" if result["stop_reason"] else "")
    )
    console.print(f"results in [bold]{out}[/] (report.html, report.md, candidates.csv, "
                  "references.csv, cifs/, plots/)")


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
    from rich import box
    from rich.table import Table

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
            "summary": _summary(db, name),
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
    _print_evidence(console, _summary(db, name))


def _summary(db, name: str) -> dict:
    from matloop.results.report import campaign_summary

    return campaign_summary(db, name)


def _print_evidence(console, summary: dict) -> None:
    """Discoveries per evidence level: nothing ML-only is called confirmed."""
    levels = ", ".join(f"{level} {n}" for level, n in summary["discoveries_by_evidence"].items())
    console.print(
        f"discoveries: [bold]{summary['discoveries']}[/] ({levels}); "
        f"confirmed (DFT-relaxed): [bold]{summary['confirmed']}[/]"
        + (f", leads for DFT: {summary['leads']}" if summary["leads"] else "")
    )
    if not summary["relaxations"]:
        return
    console.print(
        f"energies: {summary['potential']} ({summary['converged']} of {summary['relaxed']} "
        f"relaxations converged); hull: {summary['hull_scheme']}, reference set "
        f"{summary['reference_set_version'] or 'not recorded'}"
    )


@app.command()
def serve(
    config_path: ConfigArg,
    cron: Annotated[
        str | None, typer.Option(help='Cron schedule, e.g. "0 2 * * *" (every day at 02:00)')
    ] = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between runs")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds each scheduled run adds")] = 1,
    name: Annotated[
        str | None, typer.Option(help="Deployment name (default: the campaign's name)")
    ] = None,
    store: StoreOpt = None,
    output: Annotated[str | None, typer.Option(help="Output folder (overrides the config)")]
    = None,
) -> None:
    """Advance a campaign on a schedule, without a work pool (Ctrl-C stops serving).

    Each scheduled run adds --rounds rounds (finishing an interrupted round first) and
    exports the results; runs never overlap. Runs show up in the Prefect UI of the server
    that PREFECT_API_URL points at (see `matloop ui`).
    """
    if (cron is None) == (interval is None):
        _fail("give exactly one of --cron or --interval")
    if interval is not None and interval <= 0:
        _fail(f"--interval must be positive (got {interval})")
    if rounds < 1:
        _fail(f"--rounds must be at least 1 (got {rounds})")
    if cron is not None:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron)
        except ValueError:
            _fail(f"--cron {cron!r} is not a valid cron expression (e.g. \"0 2 * * *\")")
    config = _load(config_path, store, output)
    from matloop.secrets import literal_password

    if store and literal_password(store):
        _fail(
            "--store has a password in it, which would be shown in the Prefect UI as a "
            "deployment parameter; give a reference instead, e.g. --store '${MATLOOP_STORE_URI}'"
            " with the URI in that environment variable"
        )
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not os.environ.get("PREFECT_API_URL"):
        typer.secho(
            "PREFECT_API_URL is not set: the schedule lives only as long as this command. "
            "Start a server (`matloop ui`) and export PREFECT_API_URL to keep it and watch "
            "runs in the UI.",
            fg=typer.colors.YELLOW, err=True,
        )
    from matloop.flows.deploy import serve_campaign

    every = f"cron {cron!r}" if cron else f"every {interval:g} s"
    typer.echo(f"serving campaign {config.name}: {rounds} round(s) {every}")
    serve_campaign(config_path, rounds=rounds, cron=cron, interval=interval, name=name,
                   store=store, output=output)


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API and the UI")] = 4200,
) -> None:
    """Start a Prefect server with its UI (Ctrl-C stops it)."""
    env = {**os.environ, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    env.setdefault("PREFECT_UI_API_URL", f"http://{shown}:{port}/api")
    typer.echo(
        f"Prefect UI on http://{shown}:{port} — in another shell:\n"
        f"  export PREFECT_API_URL=http://{shown}:{port}/api\n"
        "  matloop run CONFIG      # or: matloop serve CONFIG --cron '0 2 * * *'"
    )
    sys.stdout.flush()
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host,
               "--port", str(port)]
    os.execvpe(command[0], command, env)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    output: Annotated[Path, typer.Option("--output", help="Folder to write")],
    store: Annotated[str, typer.Option(help="Store URI")] = "monty://./matloop-store",
) -> None:
    """Write candidates.csv, rounds.csv, references.csv, cifs/, plots/ and report.md."""
    from matloop.results.export import export_campaign

    try:
        out = export_campaign(_store(store), name, output)
    except KeyError as err:
        _fail(str(err.args[0]))
    typer.echo(f"wrote {out}")


def _parse_condition(text: str) -> tuple[str, object]:
    """``dir_gap=1.5:2.5`` (a window) or ``dir_gap=2.0`` (a value)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        _fail(f"--condition {text!r}: expected NAME=VALUE or NAME=MIN:MAX, e.g. dir_gap=1.5:2.5")
    try:
        if ":" in value:
            low, high = (float(v) for v in value.split(":", 1))
            return name, (low, high)
        return name, float(value)
    except ValueError:
        _fail(f"--condition {text!r}: {value!r} is not a number or MIN:MAX window")
    raise AssertionError  # unreachable: _fail exits


@app.command()
def train(
    kind: Annotated[str, typer.Argument(help="Model, e.g. crystal_cvae, composition_wgan")],
    data: Annotated[Path, typer.Argument(help="CSV with a 'cif' column (as perov_5/val.csv.gz)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint file to write")],
    prop: Annotated[list[str] | None, typer.Option(
        "--property", help="Property column to condition on (repeatable)")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (model default)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if present)")]
    = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows")] = None,
) -> None:
    """Train a generative model on a CSV of CIFs and write a versioned checkpoint."""
    from matloop.generators.training import TORCH_GENERATORS, train_model

    if kind not in TORCH_GENERATORS:
        _fail(f"unknown model {kind!r}; known models: {', '.join(sorted(TORCH_GENERATORS))}")
    if not data.is_file():
        _fail(f"training data not found: {data}")
    started = time.perf_counter()
    try:
        generator = train_model(kind, data, property_columns=prop or [], epochs=epochs,
                                seed=seed, device=device, limit=limit)
    except (KeyError, ValueError) as err:
        _fail(f"cannot train {kind} on {data}: {err}")
    output.parent.mkdir(parents=True, exist_ok=True)
    sha = generator.save(output)
    typer.echo(f"trained {kind} in {time.perf_counter() - started:.0f} s -> {output} "
               f"(sha256 {sha[:12]})")


@app.command()
def sample(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `matloop train`")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the CIFs")],
    n: Annotated[int, typer.Option("-n", help="Number of structures")] = 100,
    condition: Annotated[list[str] | None, typer.Option(
        help="Target property: NAME=VALUE or NAME=MIN:MAX (repeatable)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
) -> None:
    """Sample N structures from a trained model and write them as CIFs."""
    if n < 1:
        _fail(f"-n must be at least 1 (got {n})")
    if not checkpoint.is_file():
        _fail(f"checkpoint not found: {checkpoint}")
    from pymatgen.io.cif import CifWriter

    from matloop.generators.training import load_checkpoint, sample_structures

    conditions = dict(_parse_condition(c) for c in condition or [])
    try:
        generator = load_checkpoint(checkpoint, device=device)
    except ValueError as err:
        _fail(f"cannot load {checkpoint}: {err}")
    structures = sample_structures(generator, n, conditions or None, rng=seed)
    output.mkdir(parents=True, exist_ok=True)
    for index, structure in enumerate(structures):
        name = f"{index:05d}-{structure.composition.reduced_formula}.cif"
        CifWriter(structure).write_file(output / name)
    typer.echo(f"wrote {len(structures)} CIF(s) to {output}")


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    output: Annotated[
        Path | None, typer.Option("--output", help="Folder (default: the campaign's output)")
    ] = None,
    store: Annotated[str, typer.Option(help="Store URI")] = "monty://./matloop-store",
    screenshot: Annotated[
        Path | None, typer.Option(help="Also save a PNG of the page (needs chromium)")
    ] = None,
) -> None:
    """Write the campaign report (report.html, one self-contained page) with the export."""
    from matloop.results.export import export_campaign

    db = _store(store)
    doc = db.get_campaign(name)
    if doc is None:
        known = ", ".join(c.campaign for c in db.campaigns()) or "none"
        _fail(f"no campaign named {name!r} in this store (campaigns: {known})")
    if output is None:
        output = Path(doc.config.get("output") or "./matloop-output").expanduser() / name
    out = export_campaign(db, name, output, generators=_checkpoint_generators(doc.config))
    typer.echo(f"wrote {out / 'report.html'}")
    if screenshot is not None:
        from matloop.results.report import screenshot as take

        png = take(out / "report.html", screenshot, height=2600)
        if png is None:
            _fail("no chromium found for --screenshot (apt-get install chromium)")
        typer.echo(f"wrote {png}")


def _checkpoint_generators(config: dict) -> list:
    """The campaign's generators that were given as checkpoints (for latent maps)."""
    generators = [g for g in config.get("generators", []) if g.get("checkpoint")]
    if not generators:
        return []
    from matloop.generators.base import ChemicalSpace
    from matloop.generators.registry import load_generator

    space = ChemicalSpace(elements=list(config["chemical_space"]["elements"]),
                          max_atoms=config["chemical_space"]["max_atoms"])
    loaded = []
    for gen in generators:
        try:
            loaded.append(load_generator(gen["name"], gen["checkpoint"], space))
        except Exception as err:  # noqa: BLE001 - a report without a latent map is fine
            typer.secho(f"could not load {gen['name']} ({gen['checkpoint']}): {err}",
                        fg=typer.colors.YELLOW, err=True)
    return loaded


if __name__ == "__main__":
    app()
