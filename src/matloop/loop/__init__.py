"""The loop: one round of a campaign, step by step, over the store (no Prefect here).

One module per step (:mod:`~matloop.loop.generate`, :mod:`~matloop.loop.screen`,
:mod:`~matloop.loop.relax`, :mod:`~matloop.loop.evaluate`, :mod:`~matloop.loop.verify`,
:mod:`~matloop.loop.learn`), each a small class with ``name`` and ``run(ctx, round_)``
(:class:`~matloop.loop.step.Step`). :func:`~matloop.loop.step.run_step` skips a step the
round already records and records one that finishes, so an interrupted round resumes at the
step it had reached. :class:`~matloop.loop.context.RunContext` holds what steps share;
:class:`~matloop.loop.campaign.CampaignRun` is the front door.
"""

from matloop.loop.campaign import STEPS, CampaignMismatchError, CampaignRun
from matloop.loop.context import Progress, RunContext
from matloop.loop.step import Step, StepResult, run_step

__all__ = [
    "STEPS",
    "CampaignMismatchError",
    "CampaignRun",
    "Progress",
    "RunContext",
    "Step",
    "StepResult",
    "run_step",
]
