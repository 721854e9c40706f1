"""Prefect flows: a campaign runs round subflows; each of the five steps is a task.

The flows are thin: every task calls one method of :class:`matloop.flows.steps.CampaignRun`,
which does the work against the store. Without ``PREFECT_API_URL`` Prefect starts its
temporary local server; with it, runs appear in that server's UI.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from matloop.flows.artifacts import publish_report_artifacts, publish_round_artifacts
from matloop.flows.steps import STEPS, CampaignRun, Progress

# One CampaignRun per (campaign, store) in this process, so tasks share the loaded
# generators and the warm ML potential instead of rebuilding them.
_RUNS: dict[tuple[str, str], CampaignRun] = {}


def register_run(run: CampaignRun) -> None:
    _RUNS[(run.name, run.config.store)] = run


def get_run(config: dict[str, Any]) -> CampaignRun:
    from matloop.config import parse_config

    key = (config["name"], config.get("store", ""))
    if key not in _RUNS:
        parsed = parse_config(config)
        _RUNS[(parsed.name, parsed.store)] = CampaignRun(parsed)
        key = (parsed.name, parsed.store)
    return _RUNS[key]


def _with_progress_artifact(run: CampaignRun, round_: int) -> Progress:
    """Relaxation progress shown live in the UI, on top of the caller's progress."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    outer = run.progress
    state: dict[str, Any] = {}

    def started(total: int) -> None:
        state["id"] = create_progress_artifact(
            progress=0.0, description=f"{run.name} round {round_}: relaxations"
        )
        outer.relax_started(total)

    def advanced(done: int, total: int, cid: str) -> None:
        if "id" in state:
            update_progress_artifact(state["id"], progress=100.0 * done / max(total, 1))
        outer.relax_advanced(done, total, cid)

    return Progress(message=outer.message, relax_started=started, relax_advanced=advanced)


@task(name="references", task_run_name="references", cache_policy=NO_CACHE, retries=1)
def references_task(config: dict[str, Any]) -> dict:
    return get_run(config).prepare_references().counts


def _step_task(step: str, retries: int, tags: list[str]):
    @task(name=step, cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=2,
          tags=tags, task_run_name=f"{step}-round-{{round_}}")
    def _run_step(config: dict[str, Any], round_: int) -> dict:
        run = get_run(config)
        if step == "relax":
            saved = run.progress
            run.progress = _with_progress_artifact(run, round_)
            try:
                result = run.relax(round_)
            finally:
                run.progress = saved
        else:
            result = getattr(run, step)(round_)
        get_run_logger().info(
            "%s round %s: %s%s", step, round_, result.counts, " (already done)" * result.skipped
        )
        return result.counts

    return _run_step


# Generators sample (generate) and train (learn) on the GPU when they have one: those two
# steps carry the `gpu` tag, so a tag concurrency limit (`prefect concurrency-limit create
# gpu 1`, see deployments/prefect.yaml) keeps two campaigns from sharing one GPU at once.
STEP_TASKS = {
    "generate": _step_task("generate", retries=1, tags=["generate", "gpu"]),
    "screen": _step_task("screen", retries=1, tags=["screen"]),
    "relax": _step_task("relax", retries=1, tags=["relax"]),
    "evaluate": _step_task("evaluate", retries=1, tags=["evaluate"]),
    "learn": _step_task("learn", retries=0, tags=["learn", "gpu"]),
}


def _round_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"{params['config']['name']}-round-{params['round_']}"


@flow(name="matloop-round", flow_run_name=_round_name)
def round_flow(config: dict[str, Any], round_: int) -> dict:
    """generate → screen → relax → evaluate → learn, then the round's artifacts."""
    run = get_run(config)
    for step in STEPS:
        STEP_TASKS[step](config, round_)
    publish_round_artifacts(run, round_)
    return run.store.get_round(run.name, round_).metrics


def _campaign_name() -> str:
    from prefect.runtime import flow_run

    return f"{flow_run.parameters['config']['name']}"


@flow(name="matloop-campaign", flow_run_name=_campaign_name)
def campaign_flow(config: dict[str, Any], rounds: int | None = None) -> dict:
    """Advance a campaign by ``rounds`` rounds (default: the config's budget.rounds),
    finishing an interrupted round first, unless a stopping rule says stop."""
    run = get_run(config)
    logger = get_run_logger()
    references_task(config)
    rounds = rounds or run.config.budget.rounds
    done, reason = [], None
    for _ in range(rounds):
        if (reason := run.stop_reason()) is not None:
            logger.info("stopping: %s", reason)
            break
        doc = run.start_round()
        round_flow(config, doc.round)
        done.append(doc.round)
    if reason is None:
        reason = run.stop_reason()
    run.finish(reason)
    output = report_task(config)
    return {"campaign": run.name, "rounds_run": done, "stop_reason": reason, "output": output}


@task(name="report", cache_policy=NO_CACHE)
def report_task(config: dict[str, Any]) -> str | None:
    """Export the campaign (tables, CIFs, plots, report.html) to its output folder and show
    the key numbers and a link to the report on the campaign flow run."""
    from matloop.export import export_campaign

    run = get_run(config)
    generators = [gen for _, gen in run._generators or []]  # only those already loaded
    try:
        out = export_campaign(run.store, run.name, run.config.output_dir, generators=generators)
        publish_report_artifacts(run, out)
    except Exception as err:  # noqa: BLE001 - a report must never fail the campaign
        get_run_logger().warning("could not write the campaign report: %s", err)
        return None
    return str(out)
