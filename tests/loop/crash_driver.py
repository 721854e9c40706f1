"""A campaign process to be killed: runs a campaign without Prefect until its ``max_rounds``.

Used by ``tests/flows/test_crash_safety.py`` and ``benchmarks/faults.py``::

    python tests/loop/crash_driver.py CONFIG.json [--kill-at-write K] [--torn] [--bad]
        [--hiccups K,K,...]

* ``--kill-at-write K``: SIGKILL this process just before its K-th store write (1-based).
  Store writes are the only moments state changes, so killing before write K for every K
  reaches every state a crash can leave; ``--torn`` writes the first half of a multi-document
  write and then dies (a write torn in the middle).
* ``--kill-on ROUND/STEP/WHAT/N``: SIGKILL before the N-th write named WHAT (e.g.
  ``JobStore.update``, ``set_status``) during step STEP of round ROUND (``0/references``:
  the hull references); ``--torn`` applies here too. May be given several times: the first
  that matches kills.
* ``--bad``: register the generator ``bad_mix`` (:class:`BadGenerator`: overlapping atoms,
  a 1000 Å cell, too many atoms, NaN coordinates, and a crash on every third call); the
  config names it.
* ``--summary-only``: print the summary of what the store holds; run nothing.
* ``--lease``: hold the campaign's lease while running, as ``matloop run`` does; when
  another run holds it, print its message and exit 3 (:data:`EXIT_BUSY`).
* ``--hiccups K,...``: the K-th store write raises ``ConnectionError`` once (the store is
  briefly unreachable) and the step is retried, as its Prefect task would be.

Every store write is announced on stdout as ``write <n> <what>``, so a parent process can
kill at a moment of its choosing; the last line is ``done <json summary>``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from matloop.generators.base import Generator

#: Store methods that write; each call is one "write" (JobStore.update: a task document).
WRITES = (
    "add_candidates",
    "set_status",
    "claim_candidate",
    "save_round",
    "save_campaign",
    "save_relaxations",
    "save_evaluations",
    "save_references",
    "save_model",
)


class BadGenerator(Generator):
    """Proposes the crystals a broken model would: every kind of bad input."""

    name = "bad_mix"

    def __init__(self, chemical_space, seed: int = 0, **_settings) -> None:
        self.space = chemical_space
        self.calls = 0

    def sample(self, n, conditions=None, rng=None):
        from pymatgen.core import Lattice, Structure

        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("bad_mix: the model fell over")
        a, b = self.space.elements[:2]
        shift = 0.0 if rng is None else float(rng.uniform(0, 0.01))
        crystals = [
            # two atoms 0.17 Å apart
            Structure(Lattice.cubic(4.0), [a, b], [[0, 0, 0], [0.03 + shift, 0.03, 0.03]]),
            # a 1000 Å cell
            Structure(Lattice.cubic(1000.0), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5 + shift]]),
            # 64 atoms, far more than max_atoms
            Structure(Lattice.cubic(4.0 + shift), [a, b] * 4, [[0, 0, 0], [0.5] * 3] * 4)
            .make_supercell(2),
            # a collapsed cell: volume ~0
            Structure(Lattice([[4, 0, 0], [4, 1e-6, 0], [0, 0, 4 + shift]]), [a, b],
                      [[0, 0, 0], [0.5, 0.5, 0.5]]),
        ]
        nan = Structure(Lattice.cubic(4.0), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
        nan.lattice = Lattice(np.full((3, 3), np.nan))
        crystals.append(nan)
        return crystals[:n]


def register_bad_generator(module: str = __name__) -> None:
    from matloop.generators.registry import GENERATOR_PATHS

    GENERATOR_PATHS["bad_mix"] = f"{module}:BadGenerator"


#: Where the campaign is: (round, step); the driver sets it before each step.
WHERE = {"at": (0, "references")}


def _instrument(
    kill_at: int | None, torn: bool, hiccups: set[int], kill_on: list[str] | None = None
) -> None:
    from jobflow import JobStore

    from matloop.store import MatloopStore

    count = {"n": 0}
    per_kind: dict[str, int] = {}
    targets = set(kill_on or ())

    def announce(what: str) -> bool:
        """Count and print one write; True when this is the write to die at."""
        count["n"] += 1
        n = count["n"]
        round_, step = WHERE["at"]
        kind = f"{round_}/{step}/{what}"
        per_kind[kind] = per_kind.get(kind, 0) + 1
        print(f"write {n} {kind}/{per_kind[kind]}", flush=True)
        if n in hiccups:
            hiccups.discard(n)
            raise ConnectionError(f"store unreachable (injected at write {n})")
        return n == kill_at or f"{kind}/{per_kind[kind]}" in targets

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(cls, name):
        original = getattr(cls, name)

        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            kill = announce(f"{cls.__name__}.{name}")
            if kill and not (torn and _tearable(name, args)):
                die()
            if kill:  # torn: the first half of the documents, then die
                docs = args[0] if name != "set_status" else args[1]
                if name == "set_status":
                    keep = dict(list(docs.items())[: len(docs) // 2])
                    original(self, args[0], keep, *args[2:], **kwargs)
                else:
                    original(self, docs[: len(docs) // 2], *args[1:], **kwargs)
                die()
            return original(self, *args, **kwargs)

        setattr(cls, name, wrapper)

    for name in WRITES:
        wrap(MatloopStore, name)
    wrap(JobStore, "update")


def _tearable(name: str, args: tuple) -> bool:
    docs = args[1] if name == "set_status" else (args[0] if args else None)
    return name in ("add_candidates", "set_status", "save_relaxations", "save_evaluations",
                    "save_references") and docs is not None and len(docs) > 1


def summary(run) -> dict:
    """What a finished campaign holds, for comparing runs."""
    store, name = run.store, run.name
    rounds = store.rounds(name)
    jobs: dict[str, int] = {}
    for doc in store.job_store().query({"metadata.candidate_id": {"$exists": True}},
                                       properties=["metadata"]):
        cid = doc["metadata"]["candidate_id"]
        jobs[cid] = jobs.get(cid, 0) + 1
    return {
        "rounds": [
            {"round": r.round, "status": r.status, "steps_done": r.steps_done,
             "metrics": {k: r.metrics.get(k) for k in METRICS}}
            for r in rounds
        ],
        "candidates": {c.candidate_id: str(c.status) for c in store.candidates(name)},
        "reasons": {c.candidate_id: c.reason for c in store.candidates(name)
                    if str(c.status) in ("rejected", "failed")},
        "relaxations": {
            r.candidate_id: [r.ok, None if r.energy_per_atom is None
                             else round(r.energy_per_atom, 4)]
            for r in store.relaxations(name)
        },
        "evaluations": {e.candidate_id: [round(e.e_above_hull, 4), e.is_novel, e.is_unique]
                        for e in store.evaluations(name)},
        "jobs": jobs,
        "proposals": sum(c.times_proposed for c in store.candidates(name)),
    }


#: Round metrics compared between an interrupted and an uninterrupted run.
METRICS = ("proposed", "repeat_proposals", "screened", "rejected", "selected", "pool",
           "relaxed", "failed", "evaluated", "stable", "novel", "unique", "hits")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--kill-at-write", type=int)
    parser.add_argument("--torn", action="store_true")
    parser.add_argument("--bad", action="store_true")
    parser.add_argument("--hiccups", default="")
    parser.add_argument("--kill-on", action="append")
    parser.add_argument("--summary-only", action="store_true",
                        help="print what the store holds and run nothing")
    parser.add_argument("--lease", action="store_true",
                        help="hold the campaign lease while running, as `matloop run` does")
    args = parser.parse_args(argv)

    if args.bad:
        register_bad_generator("__main__")
    from matloop.config import parse_config
    from matloop.loop import CampaignRun, Progress

    hiccups = {int(k) for k in args.hiccups.split(",") if k}
    _instrument(args.kill_at_write, args.torn, hiccups, args.kill_on)
    config = parse_config(json.loads(Path(args.config).read_text()))
    run = CampaignRun(config, progress=Progress(message=lambda text: None))
    if args.summary_only:
        print("done " + json.dumps(summary(run)), flush=True)
        return 0
    if args.lease:
        from matloop.store.lease import CampaignLease, LeaseHeld

        try:
            lease = CampaignLease(run.store, run.name).acquire()
        except LeaseHeld as err:
            print(f"busy {err}", flush=True)
            return EXIT_BUSY
        print("lease taken", flush=True)
        with lease.keep_alive():
            return _run_all(run)
    return _run_all(run)


#: Exit status when another run holds the campaign's lease (as ``matloop run``).
EXIT_BUSY = 3


def _run_all(run) -> int:
    from matloop.loop import STEPS

    retries = 0

    def attempt(fn, *a):
        nonlocal retries
        for tries in range(4):
            try:
                return fn(*a)
            except ConnectionError:  # a Prefect task with retries does the same
                if tries == 3:
                    raise
                retries += 1

    attempt(run.prepare_references)
    while run.stop_reason() is None:
        last = run.current_round()
        WHERE["at"] = ((last.round + (last.status == "completed")) if last else 1, "start")
        doc = attempt(run.start_round)
        for step in STEPS:
            WHERE["at"] = (doc.round, step)
            print(f"step {doc.round} {step}", flush=True)
            attempt(getattr(run, step), doc.round)
    run.finish(run.stop_reason())
    print("done " + json.dumps({**summary(run), "retries": retries}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def differences(expected: dict, got: dict, energy_tol: float = 2e-3) -> list[str]:
    """How the summary of an interrupted run differs from an uninterrupted one's.

    Energies and hull distances may differ by ``energy_tol`` (eV/atom): the same relaxation
    run in two processes agrees to ~1e-6, a resumed one too, but a rounding edge can flip
    the fourth decimal.
    """
    problems = []
    for key in ("rounds", "candidates", "reasons"):
        if expected[key] != got[key]:
            problems.append(f"{key}: expected {expected[key]}, got {got[key]}")
    for key in ("relaxations", "evaluations"):
        if set(expected[key]) != set(got[key]):
            problems.append(f"{key}: ids differ: {sorted(set(expected[key]) ^ set(got[key]))}")
            continue
        for cid, values in expected[key].items():
            for want, have in zip(values, got[key][cid], strict=True):
                close = (
                    abs(want - have) <= energy_tol
                    if isinstance(want, float) and isinstance(have, float) else want == have
                )
                if not close:
                    problems.append(f"{key}[{cid}]: expected {values}, got {got[key][cid]}")
    twice = {cid: n for cid, n in got["jobs"].items() if n > 1 and not _reference(cid)}
    if twice:
        problems.append(f"relaxed more than once: {twice}")
    return problems


def _reference(job_id: str) -> bool:
    return job_id.startswith(("ref:", "seed:"))


def reference_reruns(got: dict) -> int:
    """Hull-reference relaxations run more than once (a kill while references were being
    relaxed: their results are not read back from the job store, unlike candidates')."""
    return sum(n - 1 for cid, n in got["jobs"].items() if _reference(cid))


def lost(before: dict, after: dict) -> int:
    """Records in ``before`` (a summary taken after a kill) missing from ``after``."""
    count = 0
    for key in ("candidates", "relaxations", "evaluations"):
        count += len(set(before[key]) - set(after[key]))
    return count
