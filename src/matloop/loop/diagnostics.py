"""How the loop itself is doing, per round and per generator: the bandit's inputs and the
diagnostics a round records (hit rate per generator, repeats, the surrogate's errors).

Everything is read from the store, so a resumed campaign computes the same numbers.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from matloop.store import CandidateStatus

if TYPE_CHECKING:
    from matloop.loop.context import RunContext

__all__ = ["generator_allocation", "generator_history", "is_hit", "round_diagnostics"]


def is_hit(evaluation, threshold: float) -> bool:
    """A discovery as the round that judged it saw it: novel, unique, within threshold."""
    e_hull = evaluation.e_above_hull_at_round
    if e_hull is None:
        e_hull = evaluation.e_above_hull
    return bool(evaluation.is_novel and evaluation.is_unique and e_hull <= threshold)


def generator_history(ctx: RunContext, before_round: int) -> dict[str, tuple[int, int]]:
    """``{generator: (hits, proposals)}`` over the candidates proposed before ``before_round``
    (a proposal still waiting in the pool counts as a proposal without a hit so far, and so
    does a repeat proposal of a crystal already stored: a generator running dry loses share)."""
    threshold = ctx.config.objective.stability_threshold
    hits = {e.candidate_id for e in ctx.store.evaluations(ctx.name) if is_hit(e, threshold)}
    proposals: Counter = Counter()
    found: Counter = Counter()
    for cand in ctx.store.candidates(ctx.name):
        if cand.round < before_round:
            proposals[cand.generator] += 1
            found[cand.generator] += cand.candidate_id in hits
    for doc in ctx.store.rounds(ctx.name):
        if doc.round < before_round:
            for g, n in (doc.metrics.get("repeats_by_generator") or {}).items():
                proposals[g] += int(n)
    return {g: (int(found[g]), int(proposals[g])) for g in proposals}


def generator_allocation(ctx: RunContext, round_: int, names: list[str]) -> dict[str, Any]:
    """Proposals per generator for ``round_`` (in the order of ``names``) and why.

    ``fixed``: the configured weights (as matloop always split them). ``thompson``: the
    bandit of :func:`matloop.evaluators.bandit.thompson_shares` on every earlier round's hits
    per proposal, drawn from the round's own random stream (a redo draws the same).
    """
    from matloop.evaluators.bandit import thompson_shares

    total = ctx.config.budget.candidates_per_round
    allocation = ctx.config.allocation
    weights = np.array([g.weight for g in ctx.config.generators], dtype=float)
    info: dict[str, Any] = {"strategy": allocation.strategy}
    if allocation.strategy == "fixed" or round_ <= 1:
        shares = weights / weights.sum()
        counts = np.floor(total * shares).astype(int)
        counts[: total - counts.sum()] += 1
    else:
        history = generator_history(ctx, round_)
        hits = [history.get(n, (0, 0))[0] for n in names]
        trials = [history.get(n, (0, 0))[1] for n in names]
        dry = ran_dry(ctx, round_ - 1, names)
        shares = thompson_shares(hits, trials, floor=allocation.floor, rng=ctx.rng(round_, 99),
                                 exhausted=[n in dry for n in names])  # fmt: skip
        from matloop.evaluators.bandit import split_budget

        counts = split_budget(total, shares)
        info["prior_hits"] = dict(zip(names, hits, strict=True))
        info["prior_proposals"] = dict(zip(names, trials, strict=True))
        if dry:
            info["ran_dry"] = sorted(dry)
    info["shares"] = {n: round(float(s), 4) for n, s in zip(names, shares, strict=True)}
    info["counts"] = [int(c) for c in counts]
    return info


def ran_dry(ctx: RunContext, round_: int, names: list[str]) -> set[str]:
    """Generators that delivered fewer proposals in ``round_`` than they were asked
    (before any reassignment): their enumeration ran out."""
    doc = ctx.store.get_round(ctx.name, round_) if round_ >= 1 else None
    if doc is None:
        return set()
    metrics = doc.metrics
    asked = (metrics.get("allocation") or {}).get("asked") or {}
    delivered = metrics.get("proposed_by") or {}
    repeats = metrics.get("repeats_by_generator") or {}
    return {n for n in names if asked.get(n, 0) > 0
            and delivered.get(n, 0) + repeats.get(n, 0) < asked[n]}


def round_diagnostics(ctx: RunContext, round_: int) -> dict[str, Any]:
    """The loop's health in ``round_``: hits and hit rate per generator (per relaxation of
    its candidates), and the share of the round's proposals that were repeats (proposals of
    crystals already stored, and proposals rejected at screening as duplicates)."""
    threshold = ctx.config.objective.stability_threshold
    evaluations = {e.candidate_id: e for e in ctx.store.evaluations(ctx.name)}
    relaxed: Counter = Counter()
    hits: Counter = Counter()
    for cand in ctx.store.candidates(
        ctx.name, status=[CandidateStatus.evaluated, CandidateStatus.relaxed,
                          CandidateStatus.failed],
    ):
        if cand.selected_round != round_:
            continue
        relaxed[cand.generator] += 1
        ev = evaluations.get(cand.candidate_id)
        hits[cand.generator] += ev is not None and ev.round == round_ and is_hit(ev, threshold)
    duplicates = 0
    for cand in ctx.store.candidates(ctx.name, status=CandidateStatus.rejected):
        if cand.round == round_ and (cand.reason or "").startswith("duplicate of"):
            duplicates += 1
    metrics = ctx.round(round_).metrics
    repeats = int(metrics.get("repeat_proposals", 0) or 0)
    asked = int(metrics.get("proposed", 0) or 0) + repeats
    return {
        "relaxed_by_generator": dict(relaxed),
        "hits_by_generator": {g: int(hits[g]) for g in relaxed},
        "hit_rate_by_generator": {g: round(hits[g] / relaxed[g], 4) for g in relaxed},
        "duplicates_rejected": duplicates,
        "duplicate_share": (repeats + duplicates) / asked if asked else 0.0,
    }
