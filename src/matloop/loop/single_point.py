"""Predictions that start from the potential's single-point energy (``acquisition.single_point``).

A relaxation only lowers a crystal's energy, so a proposal's single-point energy above the
hull, as proposed, is close to an upper bound of where it will end. The screen then predicts
``e_above_hull = single-point e_above_hull + drop``, where the surrogate ensemble learns the
drop (how much relaxing lowered the energy above hull) from the campaign's relaxed
candidates, with its spread as the uncertainty. Until enough candidates are relaxed, the drop
is taken as zero: round 1 ranks by the single-point energies alone, with or without seed
crystals.

Each candidate's energy is computed once, when it is first screened, and stored with it
(``single_point_energy``); the hull it is compared against is the campaign's current one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from matloop.loop.labels import LABEL_DECIMALS, MIN_TRAINING_POINTS
from matloop.store import CandidateStatus
from matloop.store.documents import structure_from_dict

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Structure

    from matloop.loop.context import RunContext
    from matloop.store import CandidateDoc

__all__ = ["single_point_predictions"]

logger = logging.getLogger(__name__)


def single_point_predictions(
    ctx: RunContext, round_: int, valid: list[tuple[CandidateDoc, Structure]]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """Predicted e_above_hull (mean, std) of each valid candidate and what to record of how,
    or None when the campaign's hull cannot be built (the caller falls back to the plain
    surrogate). A candidate the potential cannot evaluate gets NaN (ranked last)."""
    from matloop.evaluators.features import featurize
    from matloop.evaluators.surrogate import EnsembleSurrogate

    diagram = _campaign_hull(ctx)
    if diagram is None:
        return None
    evaluations = {e.candidate_id: e.e_above_hull for e in ctx.store.evaluations(ctx.name)}
    labelled = [(c, structure_from_dict(c.structure))
                for c in ctx.store.candidates(ctx.name, ids=list(evaluations))]  # fmt: skip
    energies = _energies(ctx, valid + labelled)
    start = _e_above_hull(ctx, diagram, valid, energies)
    mean, std = start.copy(), np.zeros(len(valid))
    info: dict[str, Any] = {"single_point_failed": int(np.isnan(start).sum())}

    train_start = _e_above_hull(ctx, diagram, labelled, energies)
    labels = np.array([evaluations[c.candidate_id] for c, _ in labelled], dtype=float)
    drop = np.round(labels - train_start, LABEL_DECIMALS)
    keep = np.isfinite(drop)
    if keep.sum() < MIN_TRAINING_POINTS:
        info["single_point_drop"] = "zero (too few relaxed candidates yet)"
        return mean, std, info

    def features(structures, start_):
        return np.column_stack([featurize(structures), start_])

    acq = ctx.config.acquisition
    surrogate = EnsembleSurrogate(n_members=acq.ensemble_size, seed=ctx.config.seed + round_,
                                  calibrate=acq.calibrate)  # fmt: skip
    train = [s for (_, s), k in zip(labelled, keep, strict=True) if k]
    surrogate.fit(features(train, train_start[keep]), drop[keep])
    drop_mean, drop_std = surrogate.predict(features([s for _, s in valid], start))
    info.update(single_point_drop=f"learned from {int(keep.sum())} relaxed candidates",
                surrogate_std_scale=surrogate.std_scale)  # fmt: skip
    return start + drop_mean, drop_std, info


def _campaign_hull(ctx: RunContext) -> PhaseDiagram | None:
    """The hull of the references and every evaluated candidate, as relaxed."""
    from matloop.evaluators.stability import EntryRejectedError, compute_hull, make_entry
    from matloop.loop.references import reference_entries

    evaluated = {c.candidate_id for c in ctx.store.candidates(
        ctx.name, status=CandidateStatus.evaluated)}  # fmt: skip
    entries = []
    for relaxation in ctx.store.relaxations(ctx.name, ids=sorted(evaluated)):
        if relaxation.ok and relaxation.energy_per_atom is not None:
            try:
                entries.append(make_entry(structure_from_dict(relaxation.structure),
                                          relaxation.energy_per_atom, relaxation.candidate_id,
                                          correct=ctx.corrects_energies))  # fmt: skip
            except EntryRejectedError:
                continue  # not on the evaluate step's hull either
    try:
        references = reference_entries(ctx.references(), correct=ctx.corrects_energies)
        return compute_hull(references, entries).phase_diagram
    except Exception as err:  # e.g. an element without a reference
        logger.warning("single-point ranking off this round: no hull (%s)", err)
        return None


def _energies(ctx: RunContext, crystals: list[tuple[CandidateDoc, Structure]]) -> dict[str, float]:
    """Single-point energy per atom of each candidate: as stored, else computed now in one
    batched call and stored (NaN, with the reason logged, where the potential fails)."""
    from matloop.relax.single_point import single_point_energies

    known = {c.candidate_id: c.single_point_energy for c, _ in crystals
             if c.single_point_energy is not None}  # fmt: skip
    todo = {c.candidate_id: s for c, s in crystals if c.candidate_id not in known}
    if todo:
        values, errors = single_point_energies(list(todo.values()))
        fresh = dict(zip(todo, map(float, values), strict=True))
        for cid, error in zip(todo, errors, strict=True):
            if error:
                logger.warning("no single-point energy for %s: %s", cid, error)
        ctx.store.set_fields(ctx.name, {cid: {"single_point_energy": e}
                                        for cid, e in fresh.items() if np.isfinite(e)})
        known.update(fresh)
    return known


def _e_above_hull(ctx: RunContext, diagram: PhaseDiagram,
                  crystals: list[tuple[CandidateDoc, Structure]],
                  energies: dict[str, float]) -> np.ndarray:  # fmt: skip
    """Energy above ``diagram`` of each crystal at its single-point energy (NaN where there
    is none, or its entry is rejected); below the hull is negative."""
    from matloop.evaluators.stability import make_entry

    out = np.full(len(crystals), np.nan)
    for row, (cand, structure) in enumerate(crystals):
        energy = energies.get(cand.candidate_id, np.nan)
        if not np.isfinite(energy):
            continue
        try:
            entry = make_entry(structure, energy, cand.candidate_id,
                               correct=ctx.corrects_energies)  # fmt: skip
            out[row] = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)[1]
        except Exception as err:  # a rejected correction, an element off the diagram
            logger.warning("no single-point e_above_hull for %s: %s", cand.candidate_id, err)
    return out
