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

Examples::

    python benchmarks/discovery.py --replay --seeds 0 1 2
    python benchmarks/discovery.py --chgnet --quick
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/perov_5/val.csv.gz")
RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "discovery.json"
CACHE = Path("/tmp/matloop-bench/perov5_features.npz")
AGENTS = ("random", "greedy", "ucb", "ei", "thompson")


# ------------------------------------------------------------------ replay: agents on perov-5


def load_pool(csv: Path, cache: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Features (cached once; ``featurize`` costs ~10 ms a crystal) and labels of the pool."""
    from matloop.relax.replay import ReplayOracle

    oracle = ReplayOracle.from_csv(csv, ["heat_ref", "dir_gap"], name="perov_5")
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
    calibration: dict[str, list[float]] = {f"{where}_within_{k}sigma": []
                                           for where in ("picked", "pool") for k in (1, 2)}
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


def replay_benchmark(args) -> dict:
    X, props, _ = load_pool(args.csv, args.cache)
    y = props["heat_ref"]
    n = len(y)
    m = math.ceil(0.01 * n)
    targets = set(np.argsort(y, kind="stable")[:m].tolist())
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
            start = time.perf_counter()
            order, calib = run_agent(agent, X, y, seed=seed, batch=args.batch,
                              max_queries=args.max_queries, members=args.members,
                              beta=args.beta)  # fmt: skip
            seconds.append(time.perf_counter() - start)
            for key, values in calib.items():
                calibration.setdefault(key, []).append(float(np.mean(values)))
            found = discovery_curve(order, targets)
            curves[agent].append(found.tolist())
            q50.append(queries_to(found, half))
            q100.append(queries_to(found, m))
            frac.append(float(found[-1] / m))
            enrich50.append(exp_half / q50[-1] if q50[-1] else None)
            enrich_budget.append(float((found[-1] / m) / (len(order) / n)))
            print(f"{agent:9s} seed {seed}: found {found[-1]}/{m} in {len(order)} queries; "
                  f"50% after {q50[-1]}, all after {q100[-1]} ({seconds[-1]:.0f} s)")  # fmt: skip
        per_agent[agent] = {
            "queries_to_50pct": _stats(q50),
            "queries_to_100pct": _stats(q100),
            "fraction_found_at_budget": _stats(frac),
            "enrichment_at_50pct": _stats(enrich50),
            "enrichment_at_budget": _stats(enrich_budget),
            "seconds": _stats(seconds),
            # mean over rounds, then mean/std over seeds; a calibrated Gaussian spread
            # gives about 0.68 and 0.95
            "calibration": {key: _stats(values) for key, values in calibration.items()},
        }
    plot = "discovery_replay.png" if set(args.agents) >= set(AGENTS) else (
        f"discovery_replay_{'_'.join(args.agents)}.png")
    plot_replay(curves, m, n, args.max_queries, RESULTS / plot)
    return {
        "pool": f"{args.csv.name}: all {n} rows",
        "objective": f"the {m} rows with the lowest heat_ref (top 1%)",
        "batch_per_round": args.batch,
        "max_queries": args.max_queries,
        "seeds": list(args.seeds),
        "surrogate": f"EnsembleSurrogate(kind='et', n_members={args.members}), featurize() "
                     f"features, refitted each round; ucb beta={args.beta}",
        "random_expected": {"queries_to_50pct": exp_half, "queries_to_100pct": exp_all},
        "agents": per_agent,
        "plot": f"benchmarks/results/{plot}",
    }


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--replay", action="store_true", help="agents on perov-5, labels by lookup")
    p.add_argument("--chgnet", action="store_true", help="campaigns with real CHGNet relaxations")
    p.add_argument("--quick", action="store_true", help="smaller CHGNet part (see the JSON)")
    p.add_argument("--rounds", type=int, help="CHGNet part: rounds per campaign")
    p.add_argument("--proposals", type=int, help="CHGNet part: candidates per round")
    p.add_argument("--relaxations", type=int, help="CHGNet part: relaxations per round")
    p.add_argument("--csv", type=Path, default=DATA, help="replay part: the labelled pool")
    p.add_argument("--vae-csv", type=Path,
                   help="CHGNet part: the learned generator's training crystals (default: "
                   "every MP and OQMD crystal of ../shared/data within the space's max_atoms)")
    p.add_argument("--cache", type=Path, default=CACHE, help="feature cache (outside the repo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--agents", nargs="+", default=list(AGENTS))
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--max-queries", type=int, default=600)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", type=Path, default=OUT)
    args = p.parse_args()
    if not (args.replay or args.chgnet):
        p.error("choose --replay and/or --chgnet")
    import torch

    torch.set_num_threads(args.threads)
    fresh = {}
    if args.replay:
        fresh["replay"] = replay_benchmark(args)
    if args.chgnet:
        from discovery_chgnet import chgnet_benchmark  # noqa: PLC0415 - heavy, optional part

        fresh["chgnet"] = chgnet_benchmark(args)
    # merged at the end: the two parts may run as separate commands
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    old = results.get("replay", {})
    same = ("objective", "seeds", "max_queries", "batch_per_round")
    if "replay" in fresh and all(old.get(k) == fresh["replay"][k] for k in same):
        # agents run in separate commands add up (same pool, objective, seeds and budget)
        fresh["replay"]["agents"] = {**old["agents"], **fresh["replay"]["agents"]}
        plots = old.get("plots", [old["plot"]] if "plot" in old else [])
        fresh["replay"]["plots"] = sorted({*plots, fresh["replay"].pop("plot")})
    results.update(fresh)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
