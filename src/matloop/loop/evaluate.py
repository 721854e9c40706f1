"""Step 4, evaluate: hull, novelty and uniqueness for the newly relaxed; refresh the
e_above_hull of everything evaluated before against the newer hull."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from matloop.loop.references import reference_entries
from matloop.store import CandidateStatus, EvaluationDoc
from matloop.store.documents import structure_from_dict, utcnow

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from matloop.loop.context import RunContext

__all__ = ["EvaluateStep", "spacegroup"]


class EvaluateStep:
    """Judge the round's relaxed candidates against the hull of everything known."""

    name: ClassVar[str] = "evaluate"

    def run(self, ctx: RunContext, round_: int) -> dict[str, Any]:
        from matloop.evaluators.evidence import evidence_for_potential, reference_set_version
        from matloop.evaluators.novelty import NoveltyIndex, ReferenceCoverage, judge_novelty
        from matloop.evaluators.stability import EntryRejectedError, compute_hull, make_entry

        store, name = ctx.store, ctx.name
        threshold = ctx.config.objective.stability_threshold
        hull_scheme, corrects = ctx.hull_scheme, ctx.corrects_energies
        references = ctx.references()
        relaxations = {r.candidate_id: r for r in store.relaxations(name) if r.ok}
        candidates = {
            c.candidate_id: c
            for c in store.candidates(
                name, status=[CandidateStatus.relaxed, CandidateStatus.evaluated]
            )
        }
        ref_entries = reference_entries(references, correct=corrects)
        cand_entries, rejected = [], {}
        for cid in candidates:
            if cid not in relaxations:
                continue
            try:
                cand_entries.append(make_entry(
                    structure_from_dict(relaxations[cid].structure),
                    relaxations[cid].energy_per_atom, cid, correct=corrects,
                ))
            except EntryRejectedError as err:  # e.g. a chemistry MP2020 cannot correct
                rejected[cid] = (CandidateStatus.failed, f"energy correction rejected: {err}")
        if rejected:
            store.set_status(name, rejected, round_=round_)
            for cid in rejected:
                relaxations.pop(cid)
        hull = compute_hull(ref_entries, cand_entries)
        hull_entries = ref_entries + cand_entries
        version = reference_set_version(
            [(e.entry_id, e.composition.formula.replace(" ", ""), e.uncorrected_energy_per_atom)
             for e in hull_entries],
            hull_scheme,
        )
        relaxer = ctx.config.relaxer
        settings = {"fmax": relaxer.fmax, "steps": relaxer.steps, "relax_cell": relaxer.relax_cell}
        campaign = store.get_campaign(name)
        campaign.reference_e_above_hull = {
            r.reference_id: hull.e_above_hull[r.reference_id] for r in references
        }
        store.save_campaign(campaign)

        known = NoveltyIndex()
        for ref in references:
            known.add(ref.reference_id, structure_from_dict(ref.structure))
        coverage = ReferenceCoverage.from_crystals(
            (ref.source, ref.chemsys) for ref in references if ref.source != "elemental"
        )
        previous = {e.candidate_id: e for e in store.evaluations(name)}
        seen = NoveltyIndex()
        docs, fresh = [], []
        for cid in sorted(candidates, key=lambda c: (candidates[c].round, c)):
            if cid not in relaxations:
                continue
            cand, relax = candidates[cid], relaxations[cid]
            structure = structure_from_dict(relax.structure)
            e_hull = float(hull.e_above_hull[cid])
            if cid in previous and previous[cid].round != round_:
                # judged in an earlier round: only its place against the newer hull changes
                # (one evaluated in this round is judged afresh, so a redo after a crash
                # counts exactly as the first attempt would have)
                doc = previous[cid]
                doc.e_above_hull = e_hull
                doc.is_stable = e_hull <= threshold
                doc.hull_version = round_
                doc.formation_energy_per_atom = hull.formation_energy.get(cid)
                doc.updated_at = utcnow()
            else:
                duplicate = known.match(structure)
                earlier = seen.match(structure)
                novelty, novelty_reference = judge_novelty(duplicate, cand.chemsys, coverage)
                doc = EvaluationDoc(
                    campaign=name,
                    candidate_id=cid,
                    round=round_,
                    formula=cand.formula,
                    energy_per_atom=relax.energy_per_atom,
                    corrected_energy_per_atom=hull.corrected_energy.get(cid),
                    formation_energy_per_atom=hull.formation_energy.get(cid),
                    e_above_hull=e_hull,
                    e_above_hull_at_round=e_hull,
                    is_stable=e_hull <= threshold,
                    is_novel=novelty == "novel",
                    is_unique=earlier is None,
                    duplicate_of=duplicate or earlier,
                    novelty=novelty.value,
                    novelty_reference=novelty_reference,
                    spacegroup=spacegroup(structure),
                    hull_scheme=hull_scheme,
                    hull_version=round_,
                )
                fresh.append(doc)
            doc.properties = {**doc.properties, **relax.properties}
            # how sure: how the energy was obtained, how well it converged, which hull
            doc.potential = relax.potential or ctx.potential
            doc.evidence = relax.evidence or evidence_for_potential(doc.potential)
            doc.settings = settings
            doc.converged, doc.max_force, doc.n_steps = (
                relax.converged, relax.max_force, relax.n_steps
            )
            doc.reference_set_version = version
            doc.n_hull_entries = len(hull_entries)
            seen.add(cid, structure)
            docs.append(doc)
        store.save_evaluations(docs)
        store.set_status(
            name, {d.candidate_id: (CandidateStatus.evaluated, None) for d in fresh},
            round_=round_,
        )
        hits = [d for d in fresh if d.is_stable and d.is_novel and d.is_unique]
        metrics = ctx.round(round_).metrics
        attempted = metrics.get("relaxed", 0) + metrics.get("failed", 0)
        counts = {
            "evaluated": len(fresh),
            "stable": sum(d.is_stable for d in fresh),
            "on_hull": sum(d.e_above_hull <= 1e-6 for d in fresh),
            "novel": sum(d.is_novel for d in fresh),
            "unjudged": sum(d.novelty == "unjudged" for d in fresh),
            "unique": sum(d.is_unique for d in fresh),
            "hits": len(hits),
            # stable, unique, not a known crystal, but nothing of its system to compare with
            "stable_novelty_unknown": sum(
                d.is_stable and d.is_unique and d.novelty == "unjudged" for d in fresh
            ),
            "hit_rate": len(hits) / attempted if attempted else 0.0,
            "best_e_above_hull": min((d.e_above_hull for d in fresh), default=None),
            "hull_scheme": hull_scheme,
            "reference_set_version": version,
        }
        ctx.progress.message(
            f"round {round_}: evaluated {len(fresh)} — {counts['stable']} within "
            f"{threshold} eV/atom of the hull, {counts['novel']} novel, {len(hits)} hit(s)"
            + (f", {counts['stable_novelty_unknown']} stable with novelty unknown (no "
               "reference crystal of their chemical system)"
               if counts["stable_novelty_unknown"] else "")
        )
        return counts


def spacegroup(structure: Structure) -> str | None:
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_symbol()
    except Exception:
        return None
