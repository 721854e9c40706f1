"""Prefect flows: a campaign runs round subflows; each step of a round is a task.

The flows are thin: every task runs one step of :class:`matloop.loop.CampaignRun`, which
does the work against the store, and gets that run as its argument. The flows of one run
are built around it by :func:`campaign_flow_for` (so tasks share its loaded generators and
warm ML potential, and the caller's progress callbacks), while their parameters stay plain
data the Prefect UI can show. Without ``PREFECT_API_URL`` Prefect starts its temporary local
server; with it, runs appear in that server's UI.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from matloop.flows.artifacts import publish_report_artifacts, publish_round_artifacts
from matloop.loop import STEPS, CampaignRun, Progress

__all__ = ["STEP_TASKS", "campaign_flow", "campaign_flow_for", "references_task", "report_task"]


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
def references_task(run: CampaignRun) -> dict:
    return run.prepare_references().counts


def _step_task(step: str, retries: int, tags: list[str]):
    @task(name=step, cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=2,
          tags=tags, task_run_name=f"{step}-round-{{round_}}")
    def run_step(run: CampaignRun, round_: int) -> dict:
        if step == "relax":
            saved = run.progress
            run.progress = _with_progress_artifact(run, round_)
            try:
                result = run.step(step, round_)
            finally:
                run.progress = saved
        else:
            result = run.step(step, round_)
        get_run_logger().info(
            "%s round %s: %s%s", step, round_, result.counts, " (already done)" * result.skipped
        )
        return result.counts

    return run_step


# Generators sample (generate) and train (learn) on the GPU when they have one: those two
# steps carry the `gpu` tag, so a tag concurrency limit (`prefect concurrency-limit create
# gpu 1`, see deployments/prefect.yaml) keeps two campaigns from sharing one GPU at once.
STEP_TASKS = {
    "generate": _step_task("generate", retries=1, tags=["generate", "gpu"]),
    "screen": _step_task("screen", retries=1, tags=["screen"]),
    "relax": _step_task("relax", retries=1, tags=["relax"]),
    "evaluate": _step_task("evaluate", retries=1, tags=["evaluate"]),
    "verify": _step_task("verify", retries=1, tags=["verify", "dft"]),
    "learn": _step_task("learn", retries=0, tags=["learn", "gpu"]),
}
assert tuple(STEP_TASKS) == STEPS, "one task per step of the loop, in its order"


@task(name="report", cache_policy=NO_CACHE)
def report_task(run: CampaignRun) -> str | None:
    """Export the campaign (tables, CIFs, plots, report.html) to its output folder and show
    the key numbers and a link to the report on the campaign flow run."""
    from matloop.results.export import export_campaign

    generators = run.context.loaded_generators()  # only those already loaded
    try:
        out = export_campaign(run.store, run.name, run.config.output_dir, generators=generators)
        publish_report_artifacts(run, out)
    except Exception as err:  # noqa: BLE001 - a report must never fail the campaign
        get_run_logger().warning("could not write the campaign report: %s", err)
        return None
    return str(out)


def _round_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"{params['campaign']}-round-{params['round_']}"


def _campaign_name() -> str:
    from prefect.runtime import flow_run

    return f"{flow_run.parameters['config']['name']}"


#: The stop reason of a run whose lease another run took over.
LEASE_LOST = "lease lost: another run took this campaign over"


def campaign_flow_for(run: CampaignRun) -> Flow:
    """The campaign flow of ``run``: ``flow(config, rounds=None) -> dict``.

    ``config`` (the run's config as JSON) is what the UI shows; the work uses ``run``.
    """

    @flow(name="matloop-round", flow_run_name=_round_name)
    def round_flow(campaign: str, round_: int) -> dict:
        """generate → screen → relax → evaluate → verify → learn, then the round's
        artifacts."""
        for step in STEPS:
            if run.lease_lost():  # the run that took over resumes this round
                get_run_logger().warning("lease lost: round %d stops before %s", round_, step)
                return {}
            STEP_TASKS[step](run, round_)
        publish_round_artifacts(run, round_)
        return run.store.get_round(run.name, round_).metrics

    @flow(name="matloop-campaign", flow_run_name=_campaign_name)
    def matloop_campaign(config: dict[str, Any], rounds: int | None = None) -> dict:
        """Advance a campaign by ``rounds`` rounds (default: the config's budget.rounds),
        finishing an interrupted round first, unless a stopping rule says stop."""
        logger = get_run_logger()
        references_task(run)
        rounds = rounds or run.config.budget.rounds
        done, reason = [], None
        try:
            for _ in range(rounds):
                if run.lease_lost():
                    break
                if (reason := run.stop_reason()) is not None:
                    logger.info("stopping: %s", reason)
                    break
                doc = run.start_round()
                round_flow(run.name, doc.round)
                done.append(doc.round)
        finally:
            run.context.close_relaxers()
        if run.lease_lost():  # the campaign record is the new holder's to write
            logger.warning("another run took over this campaign's lease; this run stopped")
            return {"campaign": run.name, "rounds_run": done, "stop_reason": LEASE_LOST,
                    "output": None}  # fmt: skip
        if reason is None:
            reason = run.stop_reason()
        run.finish(reason)
        output = report_task(run)
        return {"campaign": run.name, "rounds_run": done, "stop_reason": reason,
                "output": output}

    return matloop_campaign


def campaign_flow(
    config: dict[str, Any], rounds: int | None = None, run: CampaignRun | None = None
) -> dict:
    """Run the campaign flow of ``config`` (a JSON config), with ``run`` when the caller
    already holds one (its progress callbacks and loaded models), else a new one."""
    if run is None:
        from matloop.config import parse_config

        run = CampaignRun(parse_config(config))
    return campaign_flow_for(run)(config, rounds=rounds)
