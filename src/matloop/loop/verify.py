"""Step 5, verify: re-compute the best new ML-stable candidates with DFT (``config.dft``).

DFT results are stored as ``DftDoc`` beside the ML evaluations; DFT energies never enter the
ML hull. Without a ``dft`` block the step does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from matloop.store import DftDoc
from matloop.store.documents import structure_from_dict

if TYPE_CHECKING:
    from matloop.loop.context import RunContext

__all__ = ["VerifyStep", "verify_candidates"]


class VerifyStep:
    name: ClassVar[str] = "verify"

    def run(self, ctx: RunContext, round_: int) -> dict[str, Any]:
        if "dft_verified" in ctx.round(round_).metrics:
            # a round stored when evaluate still verified: its verification is done
            return {}
        return verify_candidates(ctx, round_)


def verify_candidates(ctx: RunContext, round_: int) -> dict[str, Any]:
    """Re-compute with DFT the ``dft.top_k`` best novel, unique candidates within the
    stability threshold that have no DFT result yet; store each as a ``DftDoc`` beside
    its ML evaluation. Returns round metrics (none when DFT is off)."""
    dft = ctx.config.dft
    if dft is None or dft.top_k == 0:
        return {}
    store, name = ctx.store, ctx.name
    done = {d.candidate_id for d in store.dft_results(name)}
    pool = sorted(
        (e for e in store.evaluations(name)
         if e.is_stable and e.is_novel and e.is_unique and e.candidate_id not in done),
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
            out, name, round_, relax, evaluation.e_above_hull,
            volume_ratio=volume_ratio, matches_ml_structure=matches,
        )])
        ok, failed = ok + out.ok, failed + (not out.ok)
    if chosen:
        ctx.progress.message(f"round {round_}: DFT verified {ok}, failed {failed}")
    return {"dft_verified": ok, "dft_failed": failed}
