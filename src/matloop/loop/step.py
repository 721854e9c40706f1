"""The :class:`Step` protocol and the one wrapper that makes steps safe to interrupt.

A step reads its inputs from the store, writes its results back, and returns the counts
that become the round's metrics. :func:`run_step` owns the bookkeeping every step shares:
a step already recorded in the round's ``steps_done`` is skipped (its stored counts are
returned), and a step that finishes is recorded, with its counts, before the next starts.
So an interrupted round resumes at the step it had reached, and no work is redone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from matloop.store.documents import utcnow

if TYPE_CHECKING:
    from matloop.loop.context import RunContext

__all__ = ["Step", "StepResult", "record_step", "run_step"]


@dataclass
class StepResult:
    step: str
    round: int
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


class Step(Protocol):
    """One step of a round: ``run`` does the work and returns the round metrics it adds."""

    name: ClassVar[str]

    def run(self, ctx: RunContext, round_: int) -> dict[str, Any]: ...


def run_step(step: Step, ctx: RunContext, round_: int, *, last: bool = False) -> StepResult:
    """Run ``step`` for ``round_`` unless the round already records it as done.

    ``last`` marks the round's final step: recording it completes the round and updates the
    campaign's count of completed rounds.
    """
    doc = ctx.round(round_)
    if step.name in doc.steps_done:
        return StepResult(step.name, round_, doc.metrics, skipped=True)
    counts = step.run(ctx, round_)
    result = record_step(ctx, round_, step.name, counts, last=last)
    if last:
        campaign = ctx.store.get_campaign(ctx.name)
        campaign.rounds_completed = sum(r.status == "completed" for r in ctx.store.rounds(ctx.name))
        campaign.status = "running"
        campaign.updated_at = utcnow()
        ctx.store.save_campaign(campaign)
    return result


def record_step(
    ctx: RunContext, round_: int, name: str, counts: dict[str, Any], *, last: bool = False
) -> StepResult:
    """Write a finished step and its counts into the round (the round completes with its
    last step)."""
    doc = ctx.round(round_)
    if name not in doc.steps_done:
        doc.steps_done.append(name)
    doc.metrics.update(counts)
    if last:
        doc.status = "completed"
        doc.completed_at = utcnow()
    ctx.store.save_round(doc)
    return StepResult(name, round_, counts)
