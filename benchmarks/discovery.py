"""Discovery benchmark: how fast does each agent find what we are looking for?

Two parts, written into one JSON (``benchmarks/results/discovery.json``, one section each):

``--replay`` (agents, no relaxation; CAMD's after-the-fact sampler)
    The pool is all 3,787 rows of ``perov_5/val.csv.gz``; the labels are answered by
    :class:`matloop.relax.replay.ReplayOracle`. **Objective: find the top 1% of the pool by
    lowest** ``heat_ref`` (DFT heat of formation relative to the elemental references,
    eV/atom; the 38 lowest rows). Every agent starts from the same random batch (per seed)
    and then queries ``--batch`` rows per round until ``--max-queries``. Agents: ``random``
    and ``greedy`` / ``ucb`` / ``ei`` / ``thompson`` (``-cal``: with the surrogate's spread
    recalibrated by cross-validation, ``calibrate=True``) on :class:`EnsembleSurrogate` (extra
    trees, distance-aware spread) over :func:`featurize` features, refitted every round on
    every labelled row. Reported per agent, mean and std over seeds: queries to find 50% and
    100% of the top 1% (None when not within the budget), the fraction found at the budget,
    and the **enrichment over random**: (expected random queries to find 50%) / (agent's
    queries to find 50%), and (fraction found) / (fraction of the pool queried) at the budget;
    and the surrogate's **calibration**: the share of labels within 1 and 2 predicted standard
    deviations, over the rows each round picked and over the whole unlabelled pool.

``--chgnet`` (the loop, real CHGNet relaxations)
    Same chemical space, same relaxations per round, several seeds, through
    :meth:`CampaignRun.run_round` on ``memory://`` stores: ``random_symmetric``,
    ``prototype_substitution``, a learned generator with active-learning fine-tuning and the
    same generator with REINFORCE. Hit rate per round and cumulative discoveries.

``--realistic`` (a campaign at realistic scale, its own file ``discovery_realistic.json``)
    ``deployments/campaigns/realistic-li-co-mn-o.yaml`` (Li-Co-Mn-O, cells <= 20 atoms, every
    generator with a bandit, 6 rounds x 64 batched CHGNet relaxations) against random
    symmetric alone, substitution alone and the loop without learning; see
    ``discovery_realistic.py``. ``--rounds``, ``--proposals``, ``--relaxations``, ``--seeds``
    and ``--strategies`` shrink it.

One command writes the whole file (both parts, every seed); ``--parts`` picks fewer, and
``--jobs 2`` runs the replay agents and the CHGNet campaigns side by side (with
``--realistic``: two campaigns at once, each on its own store). Data resolves from
``../shared/data`` beside the checkout (``--shared-data`` or ``MATLOOP_SHARED_DATA`` to
override); caches (features, training CSV, VAE checkpoint) live in ``--cache-dir`` under
names keyed by the content hash of their inputs and settings. ``--schema`` runs the same
code on a tiny synthetic pool and fake campaign rounds and prints the JSON it would write.

Examples::

    python benchmarks/discovery.py --seeds 0 1 2 --rounds 4 --proposals 32 --relaxations 8
    python benchmarks/discovery.py --parts replay --seeds 0
    python benchmarks/discovery.py --schema
    nice -n 10 python benchmarks/discovery.py --realistic --seeds 0 1 2 --threads 2
    python benchmarks/discovery.py --realistic --schema
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, content_hash, shared_data, write_result

OUT = RESULTS / "discovery.json"
REALISTIC = RESULTS / "discovery_realistic.json"
AGENTS = ("random", "greedy", "ucb", "ei", "thompson", "ucb-cal", "thompson-cal")
CALIBRATION_KEYS = tuple(f"{where}_within_{k}sigma" for where in ("picked", "pool") for k in (1, 2))


# ------------------------------------------------------------------ replay: agents on perov-5


def load_pool(csv: Path, cache_dir: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Features and labels of the pool. Features cost ~10 ms a crystal, so they are cached
    under a name keyed by the pool's content."""
    from matloop.relax.replay import ReplayOracle

    oracle = ReplayOracle.from_csv(csv, ["heat_ref", "dir_gap"], name="perov_5")
    cache = cache_dir / f"features_{content_hash(csv, 'featurize-v1')}.npz"
    if cache.is_file():
        data = np.load(cache)
        if list(data["ids"]) == oracle.ids:
            return data["X"], oracle.properties, oracle.ids
    from matloop.evaluators.features import featurize

    start = time.perf_counter()
    X = featurize(oracle.structures)
    print(f"featurised {len(X)} crystals in {time.perf_counter() - start:.0f} s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, X=X, ids=np.array(oracle.ids))
    return X, oracle.properties, oracle.ids


def synthetic_pool(n: int = 120, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """A tiny random pool for ``--schema``: same code path, no data, no featurising."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    return X, {"heat_ref": X[:, 0] + 0.1 * rng.normal(size=n)}, [str(i) for i in range(n)]


def run_agent(
    agent: str,
    X: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    batch: int,
    max_queries: int,
    members: int,
    beta: float,
) -> tuple[list[int], dict[str, list[float]]]:
    """Rows in the order the agent queried them (labels come from the oracle's table), and
    the surrogate's calibration per round: the share of the rows it picked, and of every row
    still unlabelled, whose label fell within 1 and 2 predicted standard deviations."""
    from matloop.evaluators.acquisition import select
    from matloop.evaluators.surrogate import EnsembleSurrogate
    from matloop.relax.replay import ReplayOracle

    n = len(y)
    oracle = ReplayOracle([str(i) for i in range(n)], [None] * n, {"y": y}, name="perov_5")
    rng = np.random.default_rng(seed)
    first = rng.choice(n, size=batch, replace=False)  # same start for every agent of a seed
    oracle.query(first)
    calibration: dict[str, list[float]] = {key: [] for key in CALIBRATION_KEYS}
    if agent == "random":
        rest = np.setdiff1d(np.arange(n), first)
        oracle.query(rng.permutation(rest)[: max_queries - batch])
        return oracle.queried, {}
    strategy, calibrate = agent.removesuffix("-cal"), agent.endswith("-cal")
    round_ = 0
    while oracle.n_queries < min(max_queries, n):
        round_ += 1
        known = np.asarray(oracle.queried)
        labels = oracle.properties["y"][known]
        unknown = np.setdiff1d(np.arange(n), known)
        model = EnsembleSurrogate(n_members=members, seed=seed * 1000 + round_, kind="et",
                                  calibrate=calibrate)  # fmt: skip
        model.fit(X[known], labels)
        mean, std = model.predict(X[unknown])
        k = min(batch, max_queries - oracle.n_queries, len(unknown))
        picked = select(mean, std, k, strategy=strategy, beta=beta, rng=rng,
                        best=float(labels.min()))  # fmt: skip
        error = np.abs(mean - y[unknown])  # the pool's labels, read only to score the model
        for where, rows in (("picked", picked), ("pool", slice(None))):
            for width in (1, 2):
                within = error[rows] <= width * std[rows]
                calibration[f"{where}_within_{width}sigma"].append(float(within.mean()))
        oracle.query(unknown[picked])
    return oracle.queried, calibration


def discovery_curve(order: list[int], targets: set[int]) -> np.ndarray:
    """found[i] = targets among the first i + 1 queries."""
    return np.cumsum([i in targets for i in order])


def queries_to(found: np.ndarray, count: int) -> int | None:
    hit = np.nonzero(found >= count)[0]
    return int(hit[0]) + 1 if hit.size else None


def expected_random_queries(n: int, m: int, r: int) -> float:
    """Expected draws without replacement from ``n`` rows (``m`` targets) to find ``r``."""
    return r * (n + 1) / (m + 1)


def _stats(values: list[float | None]) -> dict:
    ok = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(ok)) if ok else None,
        "std": float(np.std(ok)) if ok else None,
        "per_seed": values,
        "reached": f"{len(ok)}/{len(values)}",
    }


def replay_targets(y: np.ndarray) -> tuple[int, set[int]]:
    """The objective: the top 1% of the pool by lowest label."""
    m = math.ceil(0.01 * len(y))
    return m, set(np.argsort(y, kind="stable")[:m].tolist())


def replay_payload(args, pool: str, y: np.ndarray, runs: dict[tuple[str, int], tuple]) -> dict:
    """The replay section from every (agent, seed) run: ``(order, calibration, seconds)``."""
    n = len(y)
    m, targets = replay_targets(y)
    half = math.ceil(m / 2)
    exp_half = expected_random_queries(n, m, half)
    exp_all = expected_random_queries(n, m, m)
    curves: dict[str, list[list[int]]] = {}
    per_agent = {}
    for agent in args.agents:
        q50, q100, frac, enrich50, enrich_budget, seconds = [], [], [], [], [], []
        calibration: dict[str, list[float]] = {}
        curves[agent] = []
        for seed in args.seeds:
            order, calib, took = runs[agent, seed]
            seconds.append(took)
            for key, values in calib.items():
                calibration.setdefault(key, []).append(float(np.mean(values)))
            found = discovery_curve(order, targets)
            curves[agent].append(found.tolist())
            q50.append(queries_to(found, half))
            q100.append(queries_to(found, m))
            frac.append(float(found[-1] / m))
            enrich50.append(exp_half / q50[-1] if q50[-1] else None)
            enrich_budget.append(float((found[-1] / m) / (len(order) / n)))
            print(f"{agent:12s} seed {seed}: found {found[-1]}/{m} in {len(order)} queries; "
                  f"50% after {q50[-1]}, all after {q100[-1]} ({took:.0f} s)")  # fmt: skip
        per_agent[agent] = {
            "queries_to_50pct": _stats(q50),
            "queries_to_100pct": _stats(q100),
            "fraction_found_at_budget": _stats(frac),
            "enrichment_at_50pct": _stats(enrich50),
            "enrichment_at_budget": _stats(enrich_budget),
            "seconds": _stats(seconds),
            # mean over rounds, then mean/std over seeds; a calibrated Gaussian spread
            # gives about 0.68 and 0.95 (empty for the random agent: no surrogate)
            "calibration": {key: _stats(values) for key, values in calibration.items()},
        }
    plot = "benchmarks/results/discovery_replay.png"
    if not args.schema:
        plot_replay(curves, m, n, args.max_queries, RESULTS.parent.parent / plot)
    return {
        "pool": f"{pool}: all {n} rows",
        "objective": f"the {m} rows with the lowest heat_ref (top 1%)",
        "batch_per_round": args.batch,
        "max_queries": args.max_queries,
        "seeds": list(args.seeds),
        "surrogate": f"EnsembleSurrogate(kind='et', n_members={args.members}), featurize() "
                     f"features, refitted each round; ucb beta={args.beta}",
        "random_expected": {"queries_to_50pct": exp_half, "queries_to_100pct": exp_all},
        "agents": per_agent,
        "plot": plot,
    }


def timed_agent(agent: str, seed: int, X: np.ndarray, y: np.ndarray, args) -> tuple:
    """One replay run, timed (a worker's task)."""
    _one_thread(args.threads)
    start = time.perf_counter()
    order, calibration = run_agent(agent, X, y, seed=seed, batch=args.batch,
                                   max_queries=args.max_queries, members=args.members,
                                   beta=args.beta)  # fmt: skip
    return order, calibration, time.perf_counter() - start


def plot_replay(curves, m, n, budget, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for agent, runs in curves.items():
        length = min(len(r) for r in runs)
        arr = np.array([r[:length] for r in runs], dtype=float) / m
        x = np.arange(1, length + 1)
        ax.plot(x, arr.mean(0), label=agent)
        ax.fill_between(x, arr.min(0), arr.max(0), alpha=0.2)
    x = np.arange(1, budget + 1)
    ax.plot(x, x / n, "k:", label="random (expected)")
    ax.set_xlim(0, budget)
    ax.set_xlabel("queries (rows labelled)")
    ax.set_ylabel("fraction of the top 1% found")
    ax.set_title(f"perov-5 replay: lowest heat_ref top 1% ({m} of {n})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ main


def _one_thread(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--parts", nargs="+", choices=("replay", "chgnet"), default=["replay", "chgnet"],
                   help="which sections to run and write (default both)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shared-data", help="the shared data folder (default ../shared/data)")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(tempfile.gettempdir()) / "matloop-bench",
                   help="features, training CSV and VAE checkpoints (content-hash names)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (replay runs and the "
                   "CHGNet campaigns are independent tasks)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--output", type=Path,
                   help=f"result file (default {OUT.name}; with --realistic {REALISTIC.name})")
    p.add_argument("--realistic", action="store_true",
                   help="run only the realistic-scale campaign benchmark (discovery_realistic.py)")
    p.add_argument("--strategies", nargs="+",
                   help="with --realistic: full_loop random_symmetric substitution no_learning")
    p.add_argument("--acquisition", choices=["ucb", "greedy", "ei", "thompson", "random", "joint"],
                   help="with --realistic: the surrogate's acquisition instead of the campaign's")
    p.add_argument("--schema", action="store_true",
                   help="run on a tiny synthetic pool and fake rounds; print the JSON, write nothing")
    g = p.add_argument_group("replay part")
    g.add_argument("--csv", type=Path, help="the labelled pool (default perov_5/val.csv.gz)")
    g.add_argument("--agents", nargs="+", default=list(AGENTS))
    g.add_argument("--batch", type=int, default=20)
    g.add_argument("--max-queries", type=int, default=600)
    g.add_argument("--members", type=int, default=5)
    g.add_argument("--beta", type=float, default=1.0)
    g = p.add_argument_group("CHGNet part")
    g.add_argument("--quick", action="store_true", help="smaller CHGNet part (see the JSON)")
    g.add_argument("--rounds", type=int, help="rounds per campaign")
    g.add_argument("--proposals", type=int, help="candidates per round")
    g.add_argument("--relaxations", type=int, help="relaxations per round")
    g.add_argument("--vae-csv", type=Path,
                   help="the learned generator's training crystals (default: every MP and OQMD "
                   "crystal of the shared data within the space's max_atoms)")
    g.add_argument("--vae-epochs", type=int, help="epochs of the learned generator's training")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Every section asked for, as one payload (tasks spread over ``args.jobs`` processes)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    payload: dict = {}
    if args.realistic:
        from discovery_realistic import realistic_benchmark  # noqa: PLC0415 - heavy part

        return {"realistic": realistic_benchmark(args)}
    replay = "replay" in args.parts
    if replay:
        if args.schema:
            X, props, ids = synthetic_pool()
            args.max_queries, args.batch, args.members, pool = 40, 20, 2, "synthetic"
        else:
            csv = args.csv or shared_data(args.shared_data) / "perov_5" / "val.csv.gz"
            X, props, ids = load_pool(csv, args.cache_dir)
            pool = csv.name
        y = props["heat_ref"]
    jobs = 1 if args.schema else args.jobs
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool_ex:
        chgnet = None
        if "chgnet" in args.parts:
            from discovery_chgnet import chgnet_benchmark  # noqa: PLC0415 - heavy part

            # submitted first: the longest task
            chgnet = pool_ex.submit(chgnet_benchmark, args)
        if replay:
            futures = {(a, s): pool_ex.submit(timed_agent, a, s, X, y, args)
                       for a in args.agents for s in args.seeds}  # fmt: skip
            payload["replay"] = replay_payload(args, pool, y,
                                               {k: f.result() for k, f in futures.items()})  # fmt: skip
        if chgnet is not None:
            payload["chgnet"] = chgnet.result()
    return payload


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.schema:  # progress to stderr: stdout is the JSON
        with contextlib.redirect_stdout(sys.stderr):
            payload = run(args)
    else:
        payload = run(args)
    if args.schema:
        json.dump(payload, sys.stdout, indent=1, default=float)
        print()
        return
    output = args.output or (REALISTIC if args.realistic else OUT)
    write_result(output, payload)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
