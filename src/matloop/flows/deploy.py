"""Scheduled campaigns: one flow run advances a campaign file by a few rounds.

``matloop-scheduled`` is the flow that deployments run: ``matloop serve CONFIG --cron …``
(no work pool: the serving process runs each scheduled run) and the deployments in
``deployments/prefect.yaml`` (a ``process`` work pool and ``prefect worker start``). Its
parameters are the campaign file's path and the number of rounds, never the configuration
itself, so the file stays the one source of truth and no store password travels in flow
parameters (a store reference with ``${VAR}`` placeholders is resolved by the process that
opens the store).

Each run: read the campaign file, check the stored campaign still searches the same space,
run ``matloop-campaign`` for ``rounds`` rounds (an interrupted round is finished first), then
export the results folder. In the Prefect UI it reads::

    nacl-demo-scheduled-2025-01-31-0200      (matloop-scheduled)
      └ nacl-demo                            (matloop-campaign)
          ├ references
          └ nacl-demo-round-7                (matloop-round)
              ├ generate-round-7 … learn-round-7
              └ artifacts: nacl-demo-rounds, nacl-demo-best, nacl-demo-summary, progress
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger

if TYPE_CHECKING:
    from datetime import timedelta

    from matloop.config import CampaignConfig

FLOW_NAME = "matloop-scheduled"


def load_campaign(
    config_path: str | Path, store: str | None = None, output: str | None = None
) -> CampaignConfig:
    """The campaign file, with the store and output folder optionally overridden."""
    from matloop.config import load_config, parse_config

    config = load_config(config_path)
    updates = {k: v for k, v in {"store": store, "output": output}.items() if v}
    if updates:
        config = parse_config({**config.model_dump(), **updates}, source=str(config_path))
    return config


def _campaign_label(config_path: str) -> str:
    """The campaign's name from its file (cheap: no validation), else the file's stem."""
    import yaml

    try:
        name = yaml.safe_load(Path(config_path).read_text()).get("name")
    except Exception:
        name = None
    return str(name) if name else Path(config_path).stem


def _scheduled_name() -> str:
    from prefect.runtime import flow_run

    label = _campaign_label(flow_run.parameters["config_path"])
    when = flow_run.scheduled_start_time
    return f"{label}-scheduled-{when:%Y-%m-%d-%H%M}" if when else f"{label}-scheduled"


@flow(name=FLOW_NAME, flow_run_name=_scheduled_name)
def scheduled_campaign(
    config_path: str,
    rounds: int = 1,
    store: str | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Advance the campaign in ``config_path`` by ``rounds`` rounds and export its results.

    ``store`` and ``output`` override the file's (give a store as a reference with
    placeholders, e.g. ``${MATLOOP_STORE_URI}``, not as a URI with a password).
    """
    from matloop.flows.campaign import campaign_flow
    from matloop.loop import CampaignRun
    from matloop.results.export import export_campaign
    from matloop.store import redact_uri

    logger = get_run_logger()
    config = load_campaign(config_path, store, output)
    from matloop.store.lease import CampaignLease

    run = CampaignRun(config)
    # one run per campaign: a run started by `matloop serve` shares the server's lease
    lease = CampaignLease(run.store, config.name).acquire()
    run.lease = lease  # the flow stops before its next step if another run takes it over
    with lease.keep_alive():
        run.ensure_campaign()
        logger.info(
            "campaign %s: %d round(s) on store %s", config.name, rounds,
            redact_uri(config.store),
        )
        result = campaign_flow(config.model_dump(mode="json"), rounds=rounds, run=run)
    if run.lease_lost():  # the campaign and its output are the other run's now
        logger.warning("campaign %s was taken over by another run; not exporting", config.name)
        return result
    out = export_campaign(run.store, config.name, config.output_dir)
    logger.info("rounds %s done; results in %s", result["rounds_run"] or "none", out)
    return {**result, "output": str(out)}


def serve_campaign(
    config_path: str | Path,
    *,
    rounds: int = 1,
    cron: str | None = None,
    interval: float | timedelta | None = None,
    name: str | None = None,
    store: str | None = None,
    output: str | None = None,
) -> None:
    """Serve a scheduled deployment of ``config_path`` (blocks until interrupted).

    Runs never overlap: the deployment's concurrency limit is 1 and later runs wait.
    """
    config = load_campaign(config_path, store, output)
    scheduled_campaign.serve(
        name=name or config.name,
        cron=cron,
        interval=interval,
        parameters={
            "config_path": str(Path(config_path).resolve()),
            "rounds": rounds,
            "store": store,
            "output": output,
        },
        tags=["matloop", config.name],
        description=f"Advance campaign {config.name} by {rounds} round(s) per run.",
        limit=1,
        global_limit=1,
    )
