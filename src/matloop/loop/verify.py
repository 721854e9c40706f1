"""Step 5, verify: re-compute the best new ML-stable candidates with DFT (``config.dft``),
then place them on a DFT hull of their own.

DFT results are stored as ``DftDoc`` beside the ML evaluations; DFT energies never enter the
ML hull. The DFT hull is built from the same DFT maker's relaxations of the elemental
references and up to ``dft.max_references`` known compounds of each verified system. Without
a ``dft`` block the step does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from matloop.store import DftDoc, EvaluationDoc, ReferenceDoc
from matloop.store.documents import structure_dict, structure_from_dict

if TYPE_CHECKING:
    from matloop.loop.context import RunContext

__all__ = [
    "REFERENCE_ATTEMPTS",
    "VerifyStep",
    "dft_hull",
    "dft_label",
    "verify_candidates",
    "verify_round",
]

#: How often a DFT hull reference is tried with the same settings before the verify step
#: gives up on it: a second try covers a crash or a killed job; a DFT relaxation that does
#: not converge fails the same way every time, and a retry would cost a CP2K run per round.
REFERENCE_ATTEMPTS = 2


class VerifyStep:
    name: ClassVar[str] = "verify"

    def run(self, ctx: RunContext, round_: int) -> dict[str, Any]:
        if "dft_verified" in ctx.round(round_).metrics:
            # a round stored when evaluate still verified: its verification is done
            return {}
        return verify_round(ctx, round_)


def verify_round(ctx: RunContext, round_: int) -> dict[str, Any]:
    """Re-compute with DFT the ``dft.top_k`` best unique candidates within the stability
    threshold, novel or of unjudged novelty, that have no DFT result yet; store each as a
    ``DftDoc`` beside its ML evaluation, then judge them on the DFT hull
    (:func:`dft_hull`). Returns round metrics (none when DFT is off)."""
    dft = ctx.config.dft
    if dft is None or dft.top_k == 0:
        return {}
    store, name = ctx.store, ctx.name
    done = {d.candidate_id for d in store.dft_results(name)}
    pool = sorted(
        (e for e in store.evaluations(name)
         # novel or unjudged (not a known crystal): DFT is worth it for both
         if e.is_stable and e.is_unique and (e.is_novel or e.novelty == "unjudged")
         and e.candidate_id not in done),
        key=lambda e: (e.e_above_hull, e.candidate_id),
    )
    relaxations = {
        r.candidate_id: r for r in store.relaxations(name, ids=[e.candidate_id for e in pool])
    }
    chosen = [
        e for e in pool
        if e.candidate_id in relaxations
        and len(relaxations[e.candidate_id].structure["sites"]) <= dft.max_atoms
    ][: dft.top_k]
    ok, failed = verify_candidates(ctx, round_, chosen)
    if chosen:
        ctx.progress.message(f"round {round_}: DFT verified {ok}, failed {failed}")
    return {"dft_verified": ok, "dft_failed": failed, **dft_hull(ctx, round_)}


def verify_candidates(
    ctx: RunContext, round_: int, chosen: list[EvaluationDoc]
) -> tuple[int, int]:
    """Run the DFT relaxer on each chosen evaluation's ML-relaxed structure and store a
    ``DftDoc`` per candidate; returns (ok, failed). :func:`dft_hull` then judges them."""
    dft, store = ctx.config.dft, ctx.store
    relaxations = {
        r.candidate_id: r
        for r in store.relaxations(ctx.name, ids=[e.candidate_id for e in chosen])
    }
    ok = failed = 0
    relaxer = ctx.dft_relaxer if chosen else None
    for evaluation in chosen:
        relax = relaxations[evaluation.candidate_id]
        ml_structure = structure_from_dict(relax.structure)
        ctx.progress.message(
            f"round {round_}: DFT ({dft.code} {dft.kind}) of {evaluation.formula} "
            f"{evaluation.candidate_id[:10]}"
        )
        (out,) = relaxer.relax([(evaluation.candidate_id, ml_structure)])
        volume_ratio = matches = None
        if out.structure is not None and dft.kind == "relax":
            from pymatgen.analysis.structure_matcher import StructureMatcher

            volume_ratio = out.structure.volume / ml_structure.volume
            matches = bool(StructureMatcher().fit(out.structure, ml_structure))
        store.save_dft([DftDoc.from_outcome(
            out, ctx.name, round_, relax, evaluation.e_above_hull,
            volume_ratio=volume_ratio, matches_ml_structure=matches,
        )])
        ok, failed = ok + out.ok, failed + (not out.ok)
    return ok, failed


def dft_label(ctx: RunContext) -> str:
    """The ``potential`` of the campaign's DFT references (code, kind, settings hash)."""
    from matloop.evaluators.dft_hull import dft_label_of

    return dft_label_of(ctx.config.dft.model_dump(mode="json"))


def dft_hull(ctx: RunContext, round_: int) -> dict[str, Any]:
    """Relax with the DFT relaxer the references the verified candidates need (elements
    and up to ``dft.max_references`` known compounds of each system), build the DFT hull
    and store each verification's ``dft_e_above_hull`` and verdict. Returns metrics."""
    from matloop.evaluators.dft_hull import (
        ReferenceChoice,
        choose_references,
        dft_hull as build_dft_hull,
        verdict,
    )

    store = ctx.store
    dft, label = ctx.config.dft, dft_label(ctx)
    results = store.dft_results(ctx.name)
    placed = [d for d in results if d.ok and d.structure]
    if not results:
        return {}
    campaign = store.get_campaign(ctx.name)
    ml_hull = campaign.reference_e_above_hull if campaign is not None else {}
    references = {r.reference_id: r for r in ctx.references()  # elements: always
                  if r.source == "elemental" or len(r.structure["sites"]) <= dft.max_atoms}
    known = [ReferenceChoice(r.reference_id, r.chemsys,
                             ml_hull.get(r.reference_id, float("inf")),
                             len(r.structure["sites"]), r.source == "elemental")
             for r in references.values()]  # fmt: skip
    wanted: dict[str, list[str]] = {}
    for d in placed:
        chemsys = structure_from_dict(d.structure).composition.chemical_system
        wanted.setdefault(chemsys, choose_references(chemsys, known, dft.max_references))
    need = list(dict.fromkeys(i for ids in wanted.values() for i in ids))
    have = {r.reference_id for r in store.references(label, ids=need)}
    failures = {rid: f for rid, f in (campaign.dft_reference_failures if campaign else {}).items()
                if f.get("potential") == label}  # failures under other settings: try again
    given_up = [i for i in need
                if i not in have and failures.get(i, {}).get("attempts", 0) >= REFERENCE_ATTEMPTS]
    todo = [(i, structure_from_dict(references[i].structure))
            for i in need if i not in have and i not in given_up]
    failed = 0
    if todo:
        ctx.progress.message(f"round {round_}: DFT of {len(todo)} hull reference(s)")
    relaxer = ctx.dft_relaxer if todo else None
    for rid, structure in todo:
        (out,) = relaxer.relax([(rid, structure)])
        if not out.ok:
            failed += 1
            attempts = failures.get(rid, {}).get("attempts", 0) + 1
            ctx.progress.message(f"DFT reference {rid} failed (attempt {attempts} of "
                                 f"{REFERENCE_ATTEMPTS}): {out.reason}")
            _record_reference_failure(ctx, rid, {
                "potential": label, "attempts": attempts, "reason": out.reason,
                "round": round_, "wall_s": out.wall_s})
            continue
        ref = references[rid]
        store.save_references([ReferenceDoc(
            reference_id=rid, potential=label, formula=ref.formula, chemsys=ref.chemsys,
            energy_per_atom=float(out.energy_per_atom),
            structure=structure_dict(out.structure), source=ref.source,
            source_id=ref.source_id, evidence=out.evidence,
            settings={**out.settings, "wall_s": out.wall_s, "job_uuid": out.job_uuid},
        )])
    dft_refs = store.references(label, ids=list(references))

    def cell(doc) -> str:
        return structure_from_dict(doc.structure).composition.formula.replace(" ", "")

    hull = build_dft_hull([(r.reference_id, cell(r), r.energy_per_atom) for r in dft_refs],
                          [(d.candidate_id, cell(d), d.energy_per_atom) for d in placed],
                          scheme=label)  # fmt: skip
    threshold = ctx.config.objective.stability_threshold
    for d in results:
        d.dft_e_above_hull = hull.e_above_hull.get(d.candidate_id)
        d.verdict = verdict(d.kind, ok=d.ok, e_above_hull=d.dft_e_above_hull,
                            threshold=threshold)  # fmt: skip
        d.dft_hull_version = hull.version
        if d.structure:
            elements = set(structure_from_dict(d.structure).symbol_set)
            d.dft_reference_ids = [r.reference_id for r in dft_refs
                                   if set(r.chemsys.split("-")) <= elements]  # fmt: skip
    store.save_dft(results)
    verdicts = [d.verdict for d in results]
    return {"dft_confirmed": verdicts.count("confirmed"),
            "dft_refuted": verdicts.count("refuted"),
            "dft_references": len(dft_refs), "dft_references_failed": failed,
            "dft_references_given_up": len(given_up)}


def _record_reference_failure(ctx: RunContext, reference_id: str, failure: dict) -> None:
    """Keep a failed DFT reference on the campaign document (read fresh: other steps of the
    round save it too), so later rounds know how often it was tried."""
    campaign = ctx.store.get_campaign(ctx.name)
    if campaign is None:
        return
    campaign.dft_reference_failures = {**campaign.dft_reference_failures,
                                       reference_id: failure}
    ctx.store.save_campaign(campaign)
