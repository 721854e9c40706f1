"""Step 1, generate: each generator proposes its share of the round's candidates."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from matloop.loop.diagnostics import generator_allocation
from matloop.store import CandidateDoc, CandidateStatus
from matloop.store.documents import structure_dict, structure_from_dict

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from matloop.loop.context import RunContext

log = logging.getLogger("matloop")

__all__ = ["GenerateStep", "candidate_doc", "discoveries", "known_crystals", "raw_id",
           "unanalysable"]


class GenerateStep:
    """Ask each generator for its share of proposals; store the new ones as proposed."""

    name: ClassVar[str] = "generate"

    def run(self, ctx: RunContext, round_: int) -> dict[str, Any]:
        from matloop.identity import candidate_id

        # Generators start each round from what the store holds (their stored versions and
        # the seeds), never from state left in this process, so a resumed round proposes
        # exactly what an uninterrupted one would have.
        ctx.reset_generators()
        pairs = ctx.generators()
        # fixed weights, or the bandit's shares from earlier rounds' hits (loop.diagnostics)
        allocation = generator_allocation(ctx, round_, [g.name for _, g in pairs])
        shares = allocation.pop("counts")
        repeats, by_generator, repeats_by = 0, {}, {}
        # Candidates of this round already stored were written by an attempt of this step
        # that was interrupted: proposed again now, they count as new, not as repeats
        # (otherwise the redo would ask the generators for replacements).
        stored = ctx.store.candidates(ctx.name)
        earlier = {c.candidate_id for c in stored if c.round == round_}
        stored_ids = {c.candidate_id for c in stored if c.round < round_}  # every crystal held
        known = known_crystals(ctx, [c for c in stored if c.round < round_])
        # gathered only when a generator uses them (they need every relaxation's structure)
        wanted = any(generator.wants_discoveries for _, generator in pairs)
        found = discoveries(ctx, round_) if wanted else {}
        skipped_by: dict[str, int] = {}
        rngs = [ctx.rng(round_, 100 + index) for index in range(len(pairs))]

        def ask(index: int, wanted: int) -> int:
            """Up to ``wanted`` new candidates from generator ``index``; how many came."""
            nonlocal repeats, earlier
            cfg, generator = pairs[index]
            new_ids: list[str] = []
            for _attempt in range(3):
                if wanted <= len(new_ids):
                    break
                try:
                    structures = generator.sample(wanted - len(new_ids), rng=rngs[index])
                except Exception as err:  # one broken generator must not end the round
                    log.exception("generator %s failed", cfg.name)
                    ctx.progress.message(f"round {round_}: generator {cfg.name} failed: {err}")
                    break
                docs = [candidate_doc(ctx.name, s, round_, generator, candidate_id)
                        for s in structures]  # fmt: skip
                docs = [d for d in docs if d is not None]
                again = list(dict.fromkeys(
                    d.candidate_id for d in docs if d.candidate_id in earlier
                ))
                earlier -= set(again)
                fresh, existing = ctx.store.add_candidates(
                    [d for d in docs if d.candidate_id not in again]
                )
                new_ids += again + fresh
                repeats += len(existing)
                repeats_by[generator.name] = repeats_by.get(generator.name, 0) + len(existing)
                added = set(fresh)  # the generators after it skip what it proposed
                for doc in docs:
                    if doc.candidate_id in added and doc.status != CandidateStatus.rejected:
                        known.add(doc.candidate_id, structure_from_dict(doc.structure))
                if not structures:
                    break
            skipped_by[generator.name] = generator.skipped_known
            return len(new_ids)

        for _cfg, generator in pairs:
            # what it proposed in earlier rounds (a ranking generator moves past them)
            generator.exclude_proposed(
                {c.proposal or c.prototype for c in stored if c.generator == generator.name
                 and c.round < round_ and (c.proposal or c.prototype)}
            )
            generator.exclude_stored(stored_ids)
            generator.exclude_known(known)
            generator.use_discoveries(found)
        delivered = [ask(index, int(share)) for index, share in enumerate(shares)]
        # A generator that ran out (an enumeration used up) leaves proposals unasked: the
        # generators that delivered all they were asked share them, in proportion to their
        # own shares, so the round keeps its size.
        shortfall = int(sum(shares)) - sum(delivered)
        full = [i for i, share in enumerate(shares) if share > 0 and delivered[i] >= share]
        reassigned: dict[str, int] = {}
        if shortfall > 0 and full and len(full) < len(pairs):
            from matloop.evaluators.bandit import split_budget

            extra = split_budget(shortfall, np.array([shares[i] for i in full], dtype=float)
                                 / sum(shares[i] for i in full))
            for i, n in zip(full, extra, strict=True):
                if n > 0:
                    reassigned[pairs[i][1].name] = int(n)
                    ask(i, int(n))
        # counted from the store, so a generate step redone after a crash counts the same
        for cand in ctx.store.candidates(ctx.name, round_=round_):
            by_generator[cand.generator] = by_generator.get(cand.generator, 0) + 1
        new_total = sum(by_generator.values())
        ctx.progress.message(
            f"round {round_}: generated {new_total} new candidate(s) "
            f"({', '.join(f'{k}: {v}' for k, v in by_generator.items())}); "
            f"{repeats} repeat proposal(s) of stored crystals"
            + (f"; {sum(skipped_by.values())} known crystal(s) skipped by the generators"
               if any(skipped_by.values()) else "")
            + (f"; {shortfall} proposal(s) of generators that ran out asked of "
               f"{', '.join(reassigned)}" if reassigned else "")
        )
        allocation["asked"] = dict(zip([g.name for _, g in pairs], map(int, shares),
                                       strict=True))  # fmt: skip
        if reassigned:
            allocation["reassigned"] = reassigned
        # repeats per generator: the bandit counts them as proposals that found nothing
        return {"proposed": new_total, "repeat_proposals": repeats, "proposed_by": by_generator,
                "repeats_by_generator": repeats_by, "known_skipped_by_generator": skipped_by,
                "allocation": allocation}


def known_crystals(ctx: RunContext, stored: list[CandidateDoc]):
    """What the generators are told the campaign knows (:meth:`Generator.exclude_known`):
    the reference crystals and the stored candidates, less those rejected (a duplicate is
    already in; an invalid one is no crystal to avoid), in the index the screen's duplicate
    check uses (the cells are reduced only when a proposal of their formula comes)."""
    from matloop.evaluators.novelty import NoveltyIndex

    known = NoveltyIndex()
    for ref in ctx.references():
        if ref.source != "elemental":
            known.add(ref.reference_id, structure_from_dict(ref.structure))
    for cand in stored:
        if cand.status != CandidateStatus.rejected:
            known.add(cand.candidate_id, structure_from_dict(cand.structure))
    return known


def discoveries(ctx: RunContext, round_: int) -> dict[str, Structure]:
    """The campaign's discoveries of rounds before ``round_``, by candidate id, as relaxed
    (:meth:`Generator.use_discoveries`): stable on its hull as it stands, unique, and not a
    known crystal (novel, or unjudged for want of a reference)."""
    hits = [e.candidate_id for e in ctx.store.evaluations(ctx.name)
            if e.round < round_ and e.is_stable and e.is_unique
            and (e.is_novel or e.novelty == "unjudged")]
    if not hits:
        return {}
    return {r.candidate_id: structure_from_dict(r.structure)
            for r in ctx.store.relaxations(ctx.name, ids=hits)
            if r.ok and r.structure is not None}  # fmt: skip


def candidate_doc(campaign: str, structure, round_: int, generator, id_fn) -> CandidateDoc | None:
    """The stored record of one proposal: proposed, or rejected with its reason when it is
    too broken to fingerprint; None when it is not a crystal at all."""
    try:
        problem = unanalysable(structure)
        cid = id_fn(structure) if problem is None else None
    except Exception as err:  # a generator produced something pymatgen cannot analyse
        problem = f"{type(err).__name__}: {err}"
    try:
        comp = structure.composition
        props = dict(structure.properties or {})
    except Exception as err:
        log.warning("skipping a proposal from %s that is not a crystal: %s",
                    generator.name, err)  # fmt: skip
        return None
    history = [{"status": "proposed", "round": round_}]
    extra: dict[str, Any] = {}
    if problem is not None:
        # Kept as a rejected record (its id a hash of its raw form) so the bad proposal
        # shows up with its reason; it never reaches screening or relaxation.
        reason = f"unanalysable proposal: {problem}"
        log.warning("rejected a proposal from %s: %s", generator.name, reason)
        cid = raw_id(structure)
        history.append({"status": "rejected", "round": round_, "reason": reason})
        extra = {"status": CandidateStatus.rejected, "reason": reason}
    return CandidateDoc(
        **extra,
        campaign=campaign,
        candidate_id=cid,
        round=round_,
        formula=comp.reduced_formula,
        chemsys=comp.chemical_system,
        nsites=len(structure),
        structure=structure_dict(structure),
        generator=generator.name,
        generator_version=getattr(generator, "version", 0),
        prototype=props.get("prototype") or props.get("template"),
        proposal=props.get("proposal"),
        conditions=props.get("conditions") or {},
        history=history,
    )


def unanalysable(structure: Structure) -> str | None:
    """Why a proposal is too broken to fingerprint, or None: the id's symmetry and
    neighbour searches fail, or never finish, on non-finite or degenerate cells."""
    n = len(structure)
    if n == 0:
        return "empty structure"
    if n > 2000:
        return f"{n} atoms"
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(structure.frac_coords))):
        return "non-finite lattice or coordinates"
    volume = float(abs(np.linalg.det(matrix)))
    if volume / n > 1e6:
        return f"absurd cell: {volume / n:.3g} Å³ per atom"
    a, b, c = np.asarray(structure.lattice.lll_matrix, dtype=float)
    areas = [np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)),
             np.linalg.norm(np.cross(a, b))]
    spacing = volume / max(areas) if max(areas) > 0 else 0.0
    if not np.isfinite(spacing) or spacing < 0.1:
        return f"degenerate cell: lattice planes {spacing:.2g} Å apart"
    return None


def raw_id(structure: Structure) -> str:
    """An id for a proposal that cannot be fingerprinted: a hash of its raw form."""
    raw = json.dumps(structure_dict(structure), sort_keys=True, default=str)
    formula = structure.composition.reduced_formula or "empty"
    return f"{formula}-invalid-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"
