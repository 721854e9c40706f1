"""Step 6, learn: score the surrogate's predictions for the round (predicted vs relaxed
energy above the hull: MAE, bias, calibration), record the loop's diagnostics
(:func:`matloop.loop.diagnostics.round_diagnostics`), and feed rewards back to the
generators that learn (each declares how in ``Generator.learns``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from matloop.loop.diagnostics import round_diagnostics
from matloop.loop.models import store_model
from matloop.store import CandidateStatus
from matloop.store.documents import structure_from_dict

if TYPE_CHECKING:
    from matloop.loop.context import RunContext

__all__ = ["LearnStep", "feedback_for_round"]


class LearnStep:
    name: ClassVar[str] = "learn"

    def run(self, ctx: RunContext, round_: int) -> dict[str, Any]:
        store, name = ctx.store, ctx.name
        evaluations = [e for e in store.evaluations(name) if e.round == round_]
        by_id = {c.candidate_id: c for c in store.candidates(
            name, ids=[e.candidate_id for e in evaluations])}
        # the loop's own health this round (hit rate per generator, repeats)
        counts: dict[str, Any] = round_diagnostics(ctx, round_)
        pairs = [
            (by_id[e.candidate_id].predicted_e_above_hull, by_id[e.candidate_id].predicted_std,
             e.e_above_hull_at_round)
            for e in evaluations
            if by_id[e.candidate_id].predicted_e_above_hull is not None
            and np.isfinite(by_id[e.candidate_id].predicted_e_above_hull)
        ]
        if pairs:
            pred, std, true = (np.array(x, dtype=float) for x in zip(*pairs, strict=True))
            counts["surrogate_mae"] = float(np.mean(np.abs(pred - true)))
            counts["surrogate_bias"] = float(np.mean(pred - true))  # > 0: too pessimistic
            # calibration: a calibrated Gaussian spread holds ~68 % within 1 sigma, ~95 % in 2
            counts["surrogate_within_1sigma"] = float(np.mean(np.abs(pred - true) <= std))
            counts["surrogate_within_2sigma"] = float(np.mean(np.abs(pred - true) <= 2 * std))
        feedback, sources = feedback_for_round(ctx, round_, evaluations, by_id)
        updated = []
        for cfg, generator in ctx.generators():
            own = [f for f, g in zip(feedback, sources, strict=True) if g == generator.name]
            if own:
                counts.setdefault("mean_reward_per_proposal", {})[cfg.name] = float(
                    np.mean([f.reward for f in own])
                )
            mode = cfg.update
            if mode == "reinforce":
                # on-policy: only this generator's proposals, the rejected and failed included
                ready = bool(own) and "reinforce" in generator.learns
            else:
                ready = bool(feedback) and "finetune" in generator.learns
                own = feedback[: len(evaluations)]  # every evaluated candidate, as before
            if mode == "none" or not ready:
                continue
            if any(m.version == round_ for m in store.models(name, cfg.name)):
                updated.append(generator.name)  # done before an interruption
                continue
            if mode == "reinforce":
                logs = generator.reinforce(own, **cfg.update_settings)
                counts.setdefault("reinforce", {})[cfg.name] = logs
            else:
                generator.update(own)
            store_model(store, name, cfg.name, generator, round_)
            updated.append(generator.name)
        counts["generators_updated"] = updated
        return counts


def feedback_for_round(ctx: RunContext, round_: int, evaluations, by_id):
    """Rewards (:func:`matloop.evaluators.reward.reward`) of this round's evaluated
    candidates, then reward-0 feedback for this round's proposals rejected at screening
    and selections whose relaxation failed (the validity term; only the policy-gradient
    update sees those). Returns (feedback, the generator name of each)."""
    from matloop.evaluators.reward import reward
    from matloop.generators.base import Feedback

    objective = ctx.config.objective
    window = objective.property
    feedback, sources = [], []
    for e in evaluations:
        value = e.properties.get(window.name) if window else None
        feedback.append(Feedback(
            structure=structure_from_dict(by_id[e.candidate_id].structure),
            reward=reward(
                e.e_above_hull,
                stability_threshold=objective.stability_threshold,
                # unjudged is not known: the generator is not penalised for exploring
                novel=e.is_novel or e.novelty == "unjudged",
                unique=e.is_unique,
                property_value=value,
                window=(window.min, window.max) if window else None,
            ),
            properties={"e_above_hull": e.e_above_hull, **e.properties},
        ))
        sources.append(by_id[e.candidate_id].generator)
    invalid = ctx.store.candidates(
        ctx.name, status=[CandidateStatus.rejected, CandidateStatus.failed]
    )
    for c in invalid:
        this_round = (c.status == CandidateStatus.rejected and c.round == round_) or (
            c.status == CandidateStatus.failed and c.selected_round == round_
        )
        if this_round:
            feedback.append(Feedback(structure=structure_from_dict(c.structure), reward=0.0))
            sources.append(c.generator)
    return feedback, sources
