"""Step 3, relax: relax every selected candidate with the campaign's relaxer, storing each
result as soon as it is known."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from matloop.store import CandidateStatus, RelaxationDoc
from matloop.store.documents import structure_from_dict

if TYPE_CHECKING:
    from matloop.loop.context import RunContext

__all__ = ["CLAIM_POLL_S", "RelaxStep", "save_outcome"]

#: Seconds between looks at the store while other workers finish relaxations they claimed.
CLAIM_POLL_S = 2.0


class RelaxStep:
    """Claim selected candidates (one batch at a time), relax them, store the outcomes."""

    name: ClassVar[str] = "relax"

    def run(self, ctx: RunContext, round_: int) -> dict[str, Any]:
        from matloop.relax.runner import recorded_outcome

        store, name = ctx.store, ctx.name
        # Work is claimed one candidate at a time, atomically, so several workers can share
        # a round and a crashed worker's claims are taken over. Claims this process left
        # behind (a failed task attempt being retried) come first.
        me = store.worker_id()
        mine = [c for c in store.candidates(name, status=CandidateStatus.relaxing)
                if c.claimed_by == me]  # fmt: skip
        total = len(mine) + store.count_candidates(name, CandidateStatus.selected)
        ctx.progress.relax_started(total)
        relaxer = ctx.relaxer
        # how many candidates to claim at once: the relaxer's batch (None: all there is,
        # for executors that fan a batch out to workers)
        claim = getattr(relaxer, "claim_size", 1)
        batch_size = max(total, 1) if claim is None else claim
        potential = ctx.potential
        done_count = 0
        while True:
            batch = []
            while len(batch) < batch_size:
                cand = mine.pop() if mine else store.claim_candidate(name, round_)
                if cand is None:
                    break
                batch.append(cand)
            if not batch:
                # Nothing left to claim, but other workers may still be relaxing what they
                # took: the step is done once every claim is settled. (A dead worker's claim
                # is taken over by claim_candidate: same host at once, else after the lease.)
                if not store.count_candidates(name, CandidateStatus.relaxing):
                    break
                time.sleep(CLAIM_POLL_S)
                continue
            todo = []
            for cand in batch:
                done_before = store.relaxations(name, ids=[cand.candidate_id])
                if done_before:  # relaxed, then interrupted before its status was written
                    ok = done_before[0].ok
                    status = CandidateStatus.relaxed if ok else CandidateStatus.failed
                    store.set_status(name, {cand.candidate_id: (status, done_before[0].reason)},
                                     round_=round_)  # fmt: skip
                    continue
                structure = structure_from_dict(cand.structure)
                out = recorded_outcome(cand.candidate_id, structure, store.job_store(),
                                       potential)  # fmt: skip
                if out is None:
                    todo.append((cand.candidate_id, structure))
                else:
                    save_outcome(ctx, out, round_)
            if todo:
                # renewed while relaxing: a relaxation longer than the lease is not taken over
                renewal = store.keep_claims(name, [cid for cid, _ in todo])
                try:
                    # a relaxer that streams (chunks on cluster workers) hands each outcome
                    # over as it finishes: stored, and counted, at once
                    stream = getattr(relaxer, "stream", None)
                    outcomes = stream(todo) if stream is not None else relaxer.relax(todo)
                    for out in outcomes:
                        save_outcome(ctx, out, round_)
                        done_count += 1
                        ctx.progress.relax_advanced(done_count, max(total, done_count),
                                                    out.candidate_id)  # fmt: skip
                finally:
                    renewal.stop()
        # counted from the store: includes work done before a crash or by other workers
        results = [r for r in store.relaxations(name) if r.round == round_]
        relaxed = sum(r.ok for r in results)
        failed = len(results) - relaxed
        ctx.progress.message(f"round {round_}: relaxed {relaxed}, failed {failed}")
        return {"relaxed": relaxed, "failed": failed}


def save_outcome(ctx: RunContext, out, round_: int) -> None:
    """Store one relaxation outcome, then move its candidate to relaxed or failed."""
    ctx.store.save_relaxations([RelaxationDoc.from_outcome(out, ctx.name, round_, ctx.potential)])
    status = CandidateStatus.relaxed if out.ok else CandidateStatus.failed
    ctx.store.set_status(ctx.name, {out.candidate_id: (status, out.reason)}, round_=round_)
