"""The ``matloop`` command. Heavy imports happen inside each command, so ``--help`` is fast."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
    str | None,
    typer.Option("--store", help="Store URI (sqlite://PATH, mongodb://…, monty://PATH, memory://)"),
]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# -- pre-flight, errors and interruptions (issue #13) ----------------------------------------
# Exit codes: 0 done, 1 an unexpected failure, 2 bad input (nothing was done), 3 the campaign
# is already running elsewhere, 130 interrupted (Ctrl-C; rerun to resume).
EXIT_BUSY = 3
EXIT_INTERRUPTED = 130

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-checkpoint",
    help="Load checkpoints without a matching .sha256 beside them (files you made yourself)")]
TakeOverOpt = Annotated[bool, typer.Option(
    "--take-over",
    help="Take the campaign's lease now, even though its holder's has not yet expired (only "
    "when you know that run is gone)")]


def _say(text: str) -> None:
    """A progress line on stderr, shown at once (start-up must not be silent)."""
    typer.secho(text, err=True, dim=True)


def _check_inputs(problems: list) -> None:
    """Print every pre-flight problem, one line each; exit 2 when any is an error."""
    from matloop.preflight import errors

    for problem in problems:
        if problem.level == "warning":
            typer.secho(f"warning: {problem}", fg=typer.colors.YELLOW, err=True)
    bad = errors(problems)
    for problem in bad:
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    if bad:
        typer.secho(f"{len(bad)} problem(s) found before any work started; nothing was done",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)


class _guard:
    """Turn an unexpected exception into one line (exit 1); ``--debug`` shows the traceback.

    ``safe`` names where the work is kept, for errors after work was done."""

    def __init__(self, debug: bool, doing: str, safe: str | None = None) -> None:
        self.debug, self.doing, self.safe = debug, doing, safe

    def __enter__(self) -> _guard:
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or not isinstance(err, Exception) or self.debug:
            return False
        if isinstance(err, typer.Exit | typer.Abort):
            return False
        from matloop.store import redact_uri

        text = redact_uri(str(err).splitlines()[0] if str(err) else "")
        text = text.split(" (configured timeouts")[0].split(", Topology Description")[0]
        if len(text) > 240:  # one line, not pymongo's topology dump
            text = text[:240] + "…"
        line = f"error while {self.doing}: {type(err).__name__}: {text}".rstrip(": ")
        if self.safe:
            line += f"; {self.safe}"
        typer.secho(line + " (--debug shows the traceback)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _silence_prefect() -> None:
    """Mute Prefect's loggers: an interruption is not a crash to report."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("prefect"):
            logging.getLogger(name).disabled = True
    logging.getLogger("prefect").disabled = True


def _on_interrupt() -> None:
    """Ctrl-C (and SIGTERM) stop the work with a KeyboardInterrupt, Prefect muted first."""
    import signal

    def stop(signum, frame):
        _silence_prefect()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _resume_round(store, name: str) -> int:
    """The round a rerun of the campaign starts with."""
    rounds = store.rounds(name)
    if not rounds:
        return 1
    last = rounds[-1]
    return last.round if last.status != "completed" else last.round + 1


def _take_lease(store, name: str, take_over: bool):
    """The campaign's lease, or exit 3 saying who holds it and how to take over."""
    from matloop.store.lease import CampaignLease, LeaseHeld

    try:
        return CampaignLease(store, name).acquire(take_over=take_over)
    except LeaseHeld as err:
        _fail(str(err), EXIT_BUSY)


def _shown_uri(uri: str) -> str:
    """The store as it will be opened, password hidden (placeholders resolved)."""
    from matloop.secrets import SecretError, resolve
    from matloop.store import redact_uri

    try:
        return redact_uri(resolve(uri))
    except SecretError:
        return redact_uri(uri)


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
    trust_checkpoint: TrustOpt = False,
    take_over: TakeOverOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run (or resume) a campaign: rounds of generate, screen, relax, evaluate, verify, learn.

    Every input is checked first (seed files, checkpoints, output folder, store); one run
    per campaign: a second run of a campaign that is running refuses (exit 3).
    """
    if rounds is not None and rounds < 1:
        _fail(f"--rounds must be at least 1 (got {rounds})")
    _say(f"matloop: reading {config_path}")
    config = _load(config_path, store, output)
    from matloop.secrets import hide_literal_password

    # a password typed into the URI must not reach flow parameters (shown in the Prefect UI)
    config = config.model_copy(update={"store": hide_literal_password(config.store)})
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's 20 s for its temporary server is too short on a busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    _quiet_warnings()

    from rich.console import Console

    console = Console()
    started = time.perf_counter()
    console.print(
        f"[bold]matloop[/] campaign [cyan]{config.name}[/] — "
        f"{'-'.join(config.chemical_space.elements)}, store {_shown_uri(config.store)}"
    )
    _say("checking inputs (seed files, checkpoints, output folder, store)")
    from matloop.preflight import preflight

    with _guard(debug, "checking the inputs"):
        problems = preflight(config, trust_checkpoints=trust_checkpoint)
    _check_inputs(problems)
    if trust_checkpoint:  # the campaign's own reload of its checkpoints trusts them too
        config = config.model_copy(update={"generators": [
            g.model_copy(update={"trust": True}) for g in config.generators]})

    from matloop.loop import CampaignMismatchError, CampaignRun
    from matloop.store import StoreURIError

    progress = _rich_progress(console)
    try:
        campaign = CampaignRun(config, progress=progress)
    except StoreURIError as err:
        _fail(str(err))
    if not (config.seed_data.files or config.seed_data.materials_project
            or getattr(config.seed_data, "optimade", None)):
        console.print(
            "  [yellow]no reference crystals: novelty will be 'unjudged' (unknown), never "
            "'novel'; add seed_data.files, seed_data.materials_project or seed_data.optimade[/]"
        )
    lease = _take_lease(campaign.store, config.name, take_over)
    campaign.lease = lease
    _on_interrupt()

    def lost() -> None:
        typer.secho("warning: another run took over this campaign's lease; this run stops "
                    "before its next step",
                    fg=typer.colors.YELLOW, err=True)

    safe = "everything computed so far is kept in the store; run the same command to resume"
    try:
        with lease.keep_alive(on_lost=lost), _guard(debug, "running the campaign", safe):
            try:
                campaign.ensure_campaign()
            except CampaignMismatchError as err:
                _fail(str(err))
            from matloop.flows.campaign import campaign_flow

            _say("starting Prefect (a temporary local server unless PREFECT_API_URL is set)")
            result = campaign_flow(config.model_dump(mode="json"), rounds=rounds, run=campaign)
    except KeyboardInterrupt:
        _silence_prefect()
        try:
            resume = f" round {_resume_round(campaign.store, config.name)}"
        except Exception:  # noqa: BLE001 - the message matters more than the round number
            resume = ""
        typer.secho(f"stopped; run the same command again to resume{resume}",
                    fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if campaign.lease_lost():  # the campaign and its output are the other run's now
        _fail(f"another run took this campaign over; this run stopped after round(s) "
              f"{result['rounds_run'] or 'none'}, and left the rest to it", EXIT_BUSY)
    out = result.get("output")
    if out is None:  # the flow's report task could not write: say why, once
        out = _export_or_explain(campaign.store, config.name, config.output_dir, debug,
                                 config.store)
    _print_status(console, campaign.store, config.name)
    from matloop.results.report import campaign_summary

    coverage = campaign_summary(campaign.store, config.name).get("seed_coverage") or {}
    if coverage.get("warning"):
        console.print(f"[yellow]warning: {coverage['warning']}[/]")
    elapsed = time.perf_counter() - started
    console.print(
        f"ran round(s) {result['rounds_run'] or 'none'} in {elapsed:.0f} s"
        + (f"; campaign stopped: {result['stop_reason']}" if result["stop_reason"] else "")
    )
    if out is not None:
        console.print(f"results in [bold]{out}[/] (report.html, report.md, candidates.csv, "
                      "references.csv, cifs/, plots/)")
    else:
        raise typer.Exit(1)


def _quiet_warnings() -> None:
    """Library deprecation chatter (maggma's MongoURIStore FutureWarning) is not for users."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _rich_progress(console):
    """Step messages and a relaxation progress bar on ``console``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from matloop.loop import Progress as StepProgress

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

    return StepProgress(
        message=lambda text: console.print(f"  {text}"),
        relax_started=relax_started,
        relax_advanced=relax_advanced,
    )


def _export_or_explain(
    db, name: str, folder: Path, debug: bool, uri: str, cif_symprec: float | None = None
) -> Path | None:
    """Export the campaign; on failure one line saying why and that the store keeps it all."""
    from matloop.results.export import export_campaign

    try:
        return export_campaign(db, name, folder, cif_symprec=cif_symprec)
    except OSError as err:
        if debug:
            raise
        reason = err.strerror or str(err)
        where = err.filename or folder
        typer.secho(
            f"error: cannot write the results to {where}: {reason}. Nothing is lost: the "
            f"results are safe in the store; write them elsewhere with `matloop export {name} "
            f"--output FOLDER --store {_shown_uri(uri)}`", fg=typer.colors.RED, err=True)
        return None


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
            "stable_novelty_unknown": m.get("stable_novelty_unknown", 0),
            "hits": m.get("hits", 0),
            "hit_rate": round(m.get("hit_rate", 0.0), 4),
        })
    return rows


def _print_status(console, store, name: str) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"{name}: rounds (* = not finished)", box=box.SIMPLE_HEAD)
    columns = ["round", "proposed", "rejected", "relaxed", "failed", "evaluated", "stable",
               "novel", "stable_novelty_unknown", "hits", "hit_rate"]
    headers = ["round", "prop", "rej", "relaxed", "failed", "eval", "stable", "novel",
               "stable ?novel", "hits", "hit %"]
    for header in headers:
        table.add_column(header, justify="right")
    for row in _status_rows(store, name):
        cells = [f"{row['hit_rate']:.0%}" if c == "hit_rate" else str(row[c]) for c in columns]
        if row["status"] != "completed":
            cells[0] += "*"
        table.add_row(*cells)
    console.print(table)
    shown = ["candidate_id", "formula", "round", "spacegroup", "e_above_hull", "novelty",
             "is_novel"]  # only these: no evaluation is read whole
    from types import SimpleNamespace

    best = sorted((SimpleNamespace(**e) for e in store.project(
        "evaluations", {"campaign": name}, shown, sort={"candidate_id": 1})),
        key=lambda e: e.e_above_hull)[:8]
    if best:
        top = Table(title="best candidates (energy above hull, eV/atom)", box=box.SIMPLE_HEAD)
        for column in ["candidate", "formula", "round", "space group", "E_hull", "novelty"]:
            top.add_column(column)
        for e in best:
            top.add_row(e.candidate_id, e.formula, str(e.round), e.spacegroup or "",
                        f"{e.e_above_hull:.3f}",
                        e.novelty or ("novel" if e.is_novel else "known"))
        console.print(top)


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    store: Annotated[str, typer.Option(help="Store URI")] = "sqlite://./matloop-store.db",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    debug: DebugOpt = False,
) -> None:
    """Per round: proposed, relaxed, failed, stable, novel, hit rate."""
    _quiet_warnings()
    db = _store(store)
    with _guard(debug, f"reading the store {_shown_uri(store)}"):
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
        f"confirmed (DFT-relaxed, on the DFT hull): [bold]{summary['confirmed']}[/]"
        + (f", leads for DFT: {summary['leads']}" if summary["leads"] else "")
        + (f", refuted by DFT: {summary['dft_refuted']}" if summary.get("dft_refuted") else "")
    )
    if summary.get("stable_novelty_unknown"):
        console.print(
            f"stable, novelty unknown: [bold]{summary['stable_novelty_unknown']}[/] (no reference "
            "crystal of their chemical system; add seed_data.files, .materials_project or "
            ".optimade to judge them)"
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
    trust_checkpoint: TrustOpt = False,
    take_over: TakeOverOpt = False,
    debug: DebugOpt = False,
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
    _quiet_warnings()
    _say("checking inputs (seed files, checkpoints, output folder, store)")
    from matloop.preflight import preflight

    with _guard(debug, "checking the inputs"):
        problems = preflight(config, trust_checkpoints=trust_checkpoint)
    _check_inputs(problems)
    from matloop.store.lease import TOKEN_ENV

    # the serving process holds the campaign's lease; its scheduled runs share it
    lease = _take_lease(_store(config.store), config.name, take_over)
    os.environ[TOKEN_ENV] = f"{config.name}={lease.token}"
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
    _on_interrupt()
    try:
        with lease.keep_alive(), _guard(debug, "serving the campaign"):
            serve_campaign(config_path, rounds=rounds, cron=cron, interval=interval,
                           name=name, store=store, output=output)
    except KeyboardInterrupt:
        typer.secho("stopped serving; run the same command again to resume the schedule",
                    fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


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
    store: Annotated[str, typer.Option(help="Store URI")] = "sqlite://./matloop-store.db",
    cif_symprec: Annotated[float | None, typer.Option(
        help="Write symmetrized CIFs, finding the symmetry with this tolerance in Å (e.g. "
             "0.1); without it the relaxed cells are written as they are (P1), which is much "
             "faster for large campaigns")] = None,
    debug: DebugOpt = False,
) -> None:
    """Write candidates.csv, rounds.csv, references.csv, cifs/, plots/ and report.md."""
    from matloop.preflight import check_writable_folder

    _check_inputs(check_writable_folder(output, "--output"))
    if cif_symprec is not None and not cif_symprec > 0:
        _fail(f"--cif-symprec {cif_symprec}: the tolerance must be a positive length in Å, "
              "e.g. 0.1")
    db = _store(store)
    if db.get_campaign(name) is None:
        known = ", ".join(c.campaign for c in db.campaigns()) or "none"
        _fail(f"no campaign named {name!r} in this store (campaigns: {known})")
    with _guard(debug, "exporting", "the results are safe in the store"):
        out = _export_or_explain(db, name, output, debug, store, cif_symprec)
    if out is None:
        raise typer.Exit(1)
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
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing checkpoint at --output")] = False,
    debug: DebugOpt = False,
) -> None:
    """Train a generative model on a CSV of CIFs and write a versioned checkpoint."""
    from matloop.generators.training import TORCH_GENERATORS

    if kind not in TORCH_GENERATORS:
        _fail(f"unknown model {kind!r}; known models: {', '.join(sorted(TORCH_GENERATORS))}")
    _say(f"checking {data} and {output}")
    from matloop.preflight import Problem, check_train_output

    problems = [] if data.is_file() else [
        Problem("data", f"training data not found: {data}")]
    problems += check_train_output(output, force=force)
    _check_inputs(problems)
    _say(f"training {kind} on {data}")
    from matloop.generators.training import train_model

    started = time.perf_counter()
    with _guard(debug, f"training {kind}"):
        try:
            with _epoch_progress(f"training {kind}"):
                generator = train_model(kind, data, property_columns=prop or [], epochs=epochs,
                                        seed=seed, device=device, limit=limit)
        except (KeyError, ValueError) as err:
            _fail(f"cannot train {kind} on {data}: {err}")
        output.parent.mkdir(parents=True, exist_ok=True)
        sha = generator.save(output)
    typer.echo(f"trained {kind} in {time.perf_counter() - started:.0f} s -> {output} "
               f"(sha256 {sha[:12]})")


@contextmanager
def _epoch_progress(description: str) -> Iterator[None]:
    """A rich bar over training epochs (epoch, loss, ETA) fed by the models' epoch reports."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from matloop.generators.torch_common import training_progress

    bar = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    tasks: dict[int, int] = {}

    def on_epoch(epoch: int, epochs: int, logs: dict) -> None:
        if epoch == 1 or epochs not in tasks:  # a model may run more than one phase
            tasks[epochs] = bar.add_task(description, total=epochs, loss="")
        loss = logs.get("loss", next(iter(logs.values()), None)) if logs else None
        bar.update(tasks[epochs], completed=epoch,
                   loss="" if loss is None else f"loss {loss:.4g}")

    with bar, warnings.catch_warnings(), training_progress(on_epoch):
        warnings.simplefilter("ignore", UserWarning)
        yield


@app.command()
def sample(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `matloop train`")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the CIFs")],
    n: Annotated[int, typer.Option("-n", help="Number of structures")] = 100,
    condition: Annotated[list[str] | None, typer.Option(
        help="Target property: NAME=VALUE or NAME=MIN:MAX (repeatable)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    temperature: Annotated[float | None, typer.Option(
        help="Sampling temperature (model default when omitted)")] = None,
    trust_checkpoint: TrustOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Sample N structures from a trained model and write them as CIFs.

    Every CIF written is physically sound (pairs beyond 0.8 x covalent radii sums, a cell
    size seen in training) and read back by pymatgen before it is kept; what fails is
    counted, not written. ``sample.json`` beside the CIFs records the seed, temperature,
    conditions, checkpoint sha256 and those counts."""
    if n < 1:
        _fail(f"-n must be at least 1 (got {n})")
    conditions = dict(_parse_condition(c) for c in condition or [])
    if not checkpoint.is_file():
        _fail(f"checkpoint not found: {checkpoint}")
    _say(f"checking {checkpoint} and {output}")
    from matloop.preflight import check_checkpoint, check_writable_folder

    _check_inputs(check_checkpoint(checkpoint, "checkpoint", trust=trust_checkpoint)
                  + check_writable_folder(output, "--output"))
    from matloop.generators.training import load_checkpoint, sample_structures

    _say(f"loading {checkpoint}")
    with _guard(debug, f"loading {checkpoint}"):
        try:
            generator = load_checkpoint(checkpoint, device=device, trust=trust_checkpoint)
        except ValueError as err:
            _fail(f"cannot load {checkpoint}: {err}")
    config = getattr(generator, "config", {})
    if temperature is not None:
        if "temperature" not in config:
            _fail(f"{generator.name} has no sampling temperature")
        config["temperature"] = temperature
    output.mkdir(parents=True, exist_ok=True)
    import numpy as np
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn,
                               TimeRemainingColumn)

    from matloop.soundness import SoundnessTally

    rng = np.random.default_rng(seed)
    checked, tallies = SoundnessTally(), []
    bar = Progress("[progress.description]{task.description}", BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        task = bar.add_task(f"sampling {generator.name}", total=n)
        for start in range(0, n, _SAMPLE_CHUNK):
            chunk = sample_structures(generator, min(_SAMPLE_CHUNK, n - start),
                                      conditions or None, rng=rng)
            tally = getattr(generator, "soundness", None)
            if tally is not None:
                tallies.append(tally.to_dict())
            for structure in chunk:
                checked.add(_write_sound_cif(structure, output, checked.kept,
                                             config.get("atom_counts")))
            bar.update(task, completed=min(start + _SAMPLE_CHUNK, n))
    record = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": getattr(generator, "checkpoint_sha256", None),
        "generator": generator.name,
        "seed": seed,
        "temperature": config.get("temperature"),
        "conditions": conditions,
        "asked": n,
        "written": checked.kept,
        "not_written": dict(checked.rejected),
        "redrawn_by_generator": _merge_tallies(tallies),
    }
    (output / "sample.json").write_text(json.dumps(record, indent=2) + "\n")
    typer.echo(f"wrote {checked.kept} CIF(s) to {output} (record: {output / 'sample.json'})")
    if checked.kept < n:
        typer.echo(f"{n - checked.kept} of {n} asked were not written: "
                   + (", ".join(f"{k}: {v}" for k, v in checked.rejected.items())
                      or "the generator ran out of redraws"), err=True)


#: Structures sampled per call of ``matloop sample`` (the progress bar's step).
_SAMPLE_CHUNK = 100


def _write_sound_cif(structure, folder: Path, index: int, atom_counts) -> str | None:
    """Write ``structure`` as the ``index``-th CIF when it is sound and reads back;
    otherwise write nothing and return why."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    from matloop.soundness import unsound_reason

    reason = unsound_reason(structure, atom_counts=None if atom_counts is None
                            else set(atom_counts), check_cif=False)
    if reason is not None:
        return reason
    path = folder / f"{index:05d}-{structure.composition.reduced_formula}.cif"
    CifWriter(structure).write_file(path)
    try:
        back = Structure.from_file(path)
    except (ValueError, KeyError, IndexError) as err:
        path.unlink()
        return f"its CIF does not read back ({err})"
    if len(back) != len(structure):
        path.unlink()
        return "its CIF reads back with merged sites"
    return None


def _merge_tallies(tallies: list[dict]) -> dict:
    """One soundness tally from the per-chunk ones of a sample run."""
    drawn = sum(t["drawn"] for t in tallies)
    kept = sum(t["kept"] for t in tallies)
    rejected: dict[str, int] = {}
    for t in tallies:
        for k, v in t["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
    return {"drawn": drawn, "kept": kept, "rejected": rejected,
            "sound_rate": kept / drawn if drawn else None}


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    output: Annotated[
        Path | None, typer.Option("--output", help="Folder (default: the campaign's output)")
    ] = None,
    store: Annotated[str, typer.Option(help="Store URI")] = "sqlite://./matloop-store.db",
    screenshot: Annotated[
        Path | None, typer.Option(help="Also save a PNG of the page (needs chromium)")
    ] = None,
    debug: DebugOpt = False,
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
    from matloop.preflight import check_writable_folder

    _check_inputs(check_writable_folder(output, "--output"))
    with _guard(debug, "writing the report", "the results are safe in the store"):
        try:
            out = export_campaign(db, name, output,
                                  generators=_checkpoint_generators(doc.config))
        except OSError as err:
            if debug:
                raise
            _fail(f"cannot write the report to {err.filename or output}: "
                  f"{err.strerror or err}; the results are safe in the store", 1)
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


# -- matloop store … -----------------------------------------------------------------------
store_app = typer.Typer(no_args_is_help=True, help="Work on a store as a whole.")
app.add_typer(store_app, name="store")


@store_app.command("migrate")
def store_migrate(
    src: Annotated[str, typer.Argument(help="Store to copy from (read only)", show_default=False)],
    dst: Annotated[str, typer.Argument(help="Store to copy into", show_default=False)],
    campaign: Annotated[
        str | None, typer.Option(help="Copy only this campaign (default: all of them)")
    ] = None,
) -> None:
    """Copy campaigns between two stores, e.g. monty://OLD sqlite://NEW.db or onto MongoDB.

    Upserts by natural keys: rerunning it copies nothing twice.
    """
    from matloop.store.migrate import migrate

    source, target = _store(src), _store(dst)
    try:
        copied = migrate(source, target, campaign)
    except (KeyError, ValueError) as err:
        _fail(str(err.args[0]) if err.args else str(err))
    finally:
        source.close()
        target.close()
    typer.echo(
        f"copied {copied['candidates']} candidates of {copied['campaigns']} campaign(s) "
        f"into {target!r}: " + ", ".join(f"{k} {v}" for k, v in copied.items())
    )
