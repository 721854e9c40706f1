"""Step 2, screen: reject invalid and duplicate proposals, then pick what to relax with the
surrogate and the acquisition function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from matloop.loop.labels import LABEL_DECIMALS, MIN_TRAINING_POINTS
from matloop.store import CandidateDoc, CandidateStatus
from matloop.store.documents import structure_from_dict

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from matloop.loop.context import RunContext

__all__ = ["LABEL_DECIMALS", "MIN_TRAINING_POINTS", "ScreenStep", "acquire", "property_labels",
           "training_set"]

#: The reason of a screened candidate left in the pool for a later round.
WAITING = "waiting in the pool"


def _changed(cand: CandidateDoc, fields: dict[str, Any]) -> bool:
    """Whether ``fields`` differ from what ``cand`` holds (NaN and None: both 'no value')."""
    def value(x: Any) -> Any:
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else x

    return any(value(getattr(cand, k)) != value(v) for k, v in fields.items())


class ScreenStep:
    """Screen the pool; select ``relaxations_per_round`` candidates for relaxation."""

    name: ClassVar[str] = "screen"

    def run(self, ctx: RunContext, round_: int) -> dict[str, Any]:
        from matloop.evaluators.novelty import NoveltyIndex
        from matloop.evaluators.validity import screen_structure

        store, name = ctx.store, ctx.name
        space = ctx.config.chemical_space
        half_done = {
            c.candidate_id: (CandidateStatus.proposed, "screen redone after an interruption")
            for c in store.candidates(name, status=CandidateStatus.selected)
            if c.selected_round == round_
        }
        if half_done:  # an earlier attempt of this step stopped midway: choose afresh
            store.set_status(name, half_done, round_=round_,
                             fields={cid: {"selected_round": None} for cid in half_done})
        pool = store.candidates(name, status=CandidateStatus.proposed)
        # rejected earlier in this round (unanalysable at generation, or by that interrupted
        # attempt): not screened again, but counted as this round's
        rejected_before = sum(  # their histories alone: no structures read
            any(h["status"] == CandidateStatus.rejected and h.get("round") == round_
                for h in c["history"])
            for c in store.project("candidates", {"campaign": name, "status": "rejected"},
                                   ["history"])
        )
        rejections: dict[str, tuple[CandidateStatus, str | None]] = {}
        references = NoveltyIndex()
        known = NoveltyIndex()  # the references and every candidate kept so far
        for ref in ctx.references():
            if ref.source != "elemental":
                structure = structure_from_dict(ref.structure)
                references.add(ref.reference_id, structure)
                known.add(ref.reference_id, structure)
        for cand in store.candidates(
            name,
            status=[CandidateStatus.selected, CandidateStatus.relaxed, CandidateStatus.evaluated,
                    CandidateStatus.relaxing, CandidateStatus.failed],
        ):
            known.add(cand.candidate_id, structure_from_dict(cand.structure))
        # Candidates waiting from an earlier round passed this screen then: distinct from
        # every candidate stored before them, and every later one was matched against
        # them. They are checked again for validity and against the references only, so
        # a pool of thousands does not cost pool x formula-bucket matches every round.
        structures = {c.candidate_id: structure_from_dict(c.structure) for c in pool}
        checks = {cid: screen_structure(s, allowed_elements=space.elements,
                                        max_atoms=space.max_atoms)
                  for cid, s in structures.items()}  # fmt: skip
        waiting = {c.candidate_id for c in pool
                   if c.reason == WAITING and checks[c.candidate_id].valid}
        for cid in waiting:
            known.add(cid, structures[cid])
        valid: list[tuple[CandidateDoc, Structure]] = []
        for cand in pool:
            structure, check = structures[cand.candidate_id], checks[cand.candidate_id]
            if not check.valid:
                rejections[cand.candidate_id] = (CandidateStatus.rejected, check.reason)
                continue
            if cand.candidate_id in waiting:
                match = references.match(structure)
            elif (match := known.match(structure)) is None:
                known.add(cand.candidate_id, structure)
            if match is not None:
                rejections[cand.candidate_id] = (
                    CandidateStatus.rejected, f"duplicate of {match} (StructureMatcher)"
                )
                continue
            valid.append((cand, structure))
        duplicate_checks = references.n_comparisons + known.n_comparisons
        if rejections:
            store.set_status(name, rejections, round_=round_)

        k = min(ctx.config.budget.relaxations_per_round, len(valid))
        chosen, predictions, acquired = acquire(ctx, round_, valid, k)
        updates = {valid[i][0].candidate_id: (CandidateStatus.selected, None) for i in chosen}
        fields = {
            cand.candidate_id: {
                "predicted_e_above_hull": float(predictions[0][i]),
                "predicted_std": float(predictions[1][i]),
                "acquisition_score": float(predictions[2][i]),
                **({"selected_round": round_} if i in set(chosen) else {}),
            }
            for i, (cand, _) in enumerate(valid)
        }
        store.set_status(name, updates, round_=round_, fields=fields)
        # the rest stay 'proposed' in the pool for later rounds, with updated predictions;
        # only what changed is written (a pool of thousands is not rewritten every round)
        rest = [cand for i, (cand, _) in enumerate(valid) if i not in set(chosen)]
        newly_waiting = {c.candidate_id: (CandidateStatus.proposed, WAITING)
                         for c in rest if c.reason != WAITING}
        if newly_waiting:
            store.set_status(name, newly_waiting, round_=round_)
        store.set_fields(name, {c.candidate_id: fields[c.candidate_id] for c in rest
                                if _changed(c, fields[c.candidate_id])})
        screened, rejected = len(pool) + rejected_before, len(rejections) + rejected_before
        ctx.progress.message(
            f"round {round_}: screened {screened} — rejected {rejected}, "
            f"selected {len(chosen)} by {acquired['acquisition']}, {len(rest)} left in the pool"
        )
        return {"screened": screened, "rejected": rejected, "selected": len(chosen),
                "pool": len(rest), "duplicate_checks": duplicate_checks, **acquired}


def training_set(ctx: RunContext) -> tuple[list[Structure], np.ndarray]:
    """Every labelled crystal: evaluated candidates (as proposed, the domain the
    surrogate predicts on) and the hull references, with their e_above_hull (rounded to
    :data:`LABEL_DECIMALS`)."""
    structures, targets = [], []
    evaluations = {e.candidate_id: e for e in ctx.store.evaluations(ctx.name)}
    for cand in ctx.store.candidates(ctx.name, ids=list(evaluations)):
        structures.append(structure_from_dict(cand.structure))
        targets.append(evaluations[cand.candidate_id].e_above_hull)
    reference_hull = ctx.store.get_campaign(ctx.name).reference_e_above_hull
    for ref in ctx.references():
        if ref.reference_id in reference_hull:
            structures.append(structure_from_dict(ref.structure))
            targets.append(reference_hull[ref.reference_id])
    return structures, np.round(np.asarray(targets, dtype=float), LABEL_DECIMALS)


def acquire(ctx: RunContext, round_: int, valid, k: int):
    """(chosen indices, (mean, std, score) per candidate, the round's acquisition
    metrics: how it chose and, with a surrogate, its spread's calibration factor)."""
    from matloop.evaluators.acquisition import select

    n = len(valid)
    if n == 0:
        return [], (np.zeros(0), np.zeros(0), np.zeros(0)), {"acquisition": "none"}
    acq = ctx.config.acquisition
    rng = ctx.rng(round_, 1)
    if acq.single_point:
        from matloop.loop.single_point import single_point_predictions

        predicted = single_point_predictions(ctx, round_, valid)
        if predicted is not None:
            mean, std, info = predicted
            return _choose(ctx, round_, mean, std, None, k, rng,
                           {"single_point": True, **info}, valid)
    structures, targets = training_set(ctx)
    if len(targets) < MIN_TRAINING_POINTS:
        chosen = select(np.zeros(n), np.ones(n), k, strategy="random", rng=rng)
        nan = np.full(n, np.nan)
        return (list(map(int, chosen)), (nan, nan, nan),
                {"acquisition": "random (too few labels yet)"})
    from matloop.evaluators.features import featurize
    from matloop.evaluators.surrogate import EnsembleSurrogate

    surrogate = EnsembleSurrogate(n_members=acq.ensemble_size, seed=ctx.config.seed + round_,
                                  calibrate=acq.calibrate)  # fmt: skip
    surrogate.fit(featurize(structures), targets)
    fitted = {"surrogate_std_scale": surrogate.std_scale}
    mean, std = surrogate.predict(featurize([s for _, s in valid]))
    best = float(np.min(targets)) if len(targets) else None
    return _choose(ctx, round_, mean, std, best, k, rng, fitted, valid)


def _choose(ctx: RunContext, round_: int, mean, std, best, k: int, rng, fitted, valid):
    """The ``k`` candidates the acquisition function picks from predicted (mean, std)."""
    from matloop.evaluators.acquisition import best_k, select

    acq = ctx.config.acquisition
    if acq.strategy == "joint":
        score, label = joint_scores(ctx, mean, std, valid, round_)
        chosen = best_k(score, k, tie_break=mean)
        return list(map(int, chosen)), (mean, std, score), {"acquisition": label, **fitted}
    chosen = select(mean, std, k, strategy=acq.strategy, beta=acq.beta, rng=rng, best=best)
    score = mean - acq.beta * std
    return list(map(int, chosen)), (mean, std, score), {"acquisition": acq.strategy, **fitted}


def joint_scores(ctx: RunContext, e_mean, e_std, valid, round_: int):
    """``-P(stable) * P(property in window)`` per candidate (see
    :func:`matloop.evaluators.reward.multiobjective_scores`). The property comes from a
    second ensemble fitted on every known value of it: seed crystals' columns and what
    the relaxer reported (a replay table). Too few values: stability alone."""
    from matloop.evaluators.reward import multiobjective_scores

    objective = ctx.config.objective
    window = objective.property
    p_mean = p_std = None
    if window is not None:
        structures, values = property_labels(ctx, window.name)
        if len(values) >= MIN_TRAINING_POINTS:
            from matloop.evaluators.features import featurize
            from matloop.evaluators.surrogate import EnsembleSurrogate

            model = EnsembleSurrogate(n_members=ctx.config.acquisition.ensemble_size,
                                      seed=ctx.config.seed + round_ + 7919,
                                      calibrate=ctx.config.acquisition.calibrate)  # fmt: skip
            model.fit(featurize(structures), values)
            p_mean, p_std = model.predict(featurize([s for _, s in valid]))
    score = multiobjective_scores(
        e_mean, e_std, objective.stability_threshold, p_mean, p_std,
        (window.min, window.max) if window is not None else None,
    )
    if window is None:
        return score, "joint (stability only: no property window)"
    if p_mean is None:
        return score, f"joint (stability only: too few {window.name} values yet)"
    return score, f"joint (stability x {window.name} window)"


def property_labels(ctx: RunContext, name: str) -> tuple[list[Structure], np.ndarray]:
    """Every known value of property ``name``: evaluated candidates (as proposed) whose
    relaxer reported it, and seed crystals that carry it (rounded to :data:`LABEL_DECIMALS`)."""
    structures, values = [], []
    evaluations = {e.candidate_id: e for e in ctx.store.evaluations(ctx.name)
                   if np.isfinite(e.properties.get(name, np.nan))}  # fmt: skip
    for cand in ctx.store.candidates(ctx.name, ids=list(evaluations)):
        structures.append(structure_from_dict(cand.structure))
        values.append(evaluations[cand.candidate_id].properties[name])
    for ref in ctx.references():
        value = (ref.properties or {}).get(name)
        if value is not None and np.isfinite(value):
            structures.append(structure_from_dict(ref.structure))
            values.append(float(value))
    return structures, np.round(np.asarray(values, dtype=float), LABEL_DECIMALS)
