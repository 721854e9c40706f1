"""The ``--realistic`` part of ``benchmarks/discovery.py``: a campaign at realistic scale.

The campaign is ``deployments/campaigns/realistic-li-co-mn-o.yaml`` (Li-Co-Mn-O, cells of
up to 20 atoms, every generator at once with a Thompson bandit over generators, batched
CHGNet relaxations, surrogate refitted and the crystal VAE fine-tuned every round). Four
strategies run it with the same space, relaxer, acquisition, seed crystals, budget and seeds,
through :meth:`CampaignRun.run_round` (no Prefect), on one ``memory://`` store (references
relaxed once):

* ``full_loop``: the campaign file as it is;
* ``random_symmetric``: random symmetric crystals alone;
* ``substitution``: substitution alone (``ion_substitution`` into known crystals of any
  chemistry, and ``prototype_substitution``; fixed equal weights);
* ``no_learning``: every generator, ``update: none``, ``allocation: fixed``.

A discovery is a hit as the round that judged it saw it: novel against the reference crystals
(the MP and OQMD samples of the shared data), unique, within 0.1 eV/atom of the campaign's
CHGNet hull. Reported per strategy, mean and std over seeds: discoveries per 100 relaxations
per round, cumulative discoveries, the share of proposals that were repeats, the bandit's
allocation, the surrogate's MAE and calibration, and wall time and peak memory per round.
"""

from __future__ import annotations

import os
import resource
import time
import warnings
from pathlib import Path

import numpy as np
from common import ROOT, content_hash, shared_data

CAMPAIGN = ROOT / "deployments" / "campaigns" / "realistic-li-co-mn-o.yaml"
STRATEGIES = ("full_loop", "random_symmetric", "substitution", "no_learning")
VAE = {"hidden": 256, "latent_dim": 32, "seed": 0}
VAE_NAME = "crystal_vae-le20.pt"


def base_config() -> dict:
    import yaml

    return yaml.safe_load(CAMPAIGN.read_text())


def strategy_config(strategy: str, seed: int, scale: dict) -> dict:
    """The campaign file, changed only where the strategy differs, at the asked scale."""
    config = base_config()
    generators = config["generators"]
    if strategy == "random_symmetric":
        generators = [g for g in generators if g["name"] == "random_symmetric"]
        config["allocation"] = {"strategy": "fixed"}
    elif strategy == "substitution":
        generators = [g for g in generators if g["name"].endswith("substitution")]
        config["allocation"] = {"strategy": "fixed"}
    elif strategy == "no_learning":
        generators = [{**g, "update": "none"} for g in generators]
        config["allocation"] = {"strategy": "fixed"}
    config.update(
        name=f"realistic-{strategy}-s{seed}",
        generators=generators,
        store="memory://",
        seed=seed,
    )
    config["budget"] = {"rounds": scale["rounds"],
                        "candidates_per_round": scale["candidates_per_round"],
                        "relaxations_per_round": scale["relaxations_per_round"]}  # fmt: skip
    config["relaxer"]["batch_size"] = min(config["relaxer"]["batch_size"],
                                          scale["relaxations_per_round"])  # fmt: skip
    if scale.get("acquisition"):
        config["acquisition"]["strategy"] = scale["acquisition"]
    return config


def train_vae(data: Path, epochs: int, cache_dir: Path) -> Path:
    """The campaign's crystal VAE, trained on every MP and OQMD crystal of the shared data
    with at most 20 atoms, cached in ``cache_dir/<hash>/crystal_vae-le20.pt``."""
    from discovery_chgnet import known_crystals_csv

    csv = known_crystals_csv(data, 20, cache_dir)
    folder = cache_dir / f"vae_le20_{content_hash(csv, {'epochs': epochs, **VAE})}"
    path = folder / VAE_NAME
    if path.is_file():
        return path
    from matloop.generators.training import train_model

    start = time.perf_counter()
    gen = train_model("crystal_vae", csv, epochs=epochs, device="cpu", **VAE)
    folder.mkdir(parents=True, exist_ok=True)
    gen.save(path)
    print(f"trained crystal_vae on {csv.name} ({epochs} epochs) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    return path


def _rss_mb() -> tuple[float, float]:
    """(resident now, peak of the process so far) in MB (Linux /proc; getrusage else)."""
    now = peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
    except OSError:
        pass
    return round(now, 1), round(peak, 1)


def round_record(round_: int, m: dict, seconds: float, steps: dict | None = None) -> dict:
    """What the benchmark keeps of one round."""
    attempted = m.get("relaxed", 0) + m.get("failed", 0)
    rss, peak = _rss_mb()
    allocation = m.get("allocation") or {}
    return {
        "round": round_,
        "proposed": m.get("proposed", 0),
        "repeat_proposals": m.get("repeat_proposals", 0),
        "rejected": m.get("rejected", 0),
        "relaxed": m.get("relaxed", 0),
        "failed": m.get("failed", 0),
        "hits": m.get("hits", 0),
        "discoveries_per_100": 100.0 * m.get("hits", 0) / attempted if attempted else 0.0,
        "duplicate_share": m.get("duplicate_share", 0.0),
        # one record per generator (a list, so every round has the same keys)
        "generators": [
            {"generator": g, "proposals_asked": int(n),
             "relaxed": int((m.get("relaxed_by_generator") or {}).get(g, 0)),
             "hits": int((m.get("hits_by_generator") or {}).get(g, 0))}
            for g, n in (allocation.get("asked") or {}).items()
        ],
        "surrogate_mae": m.get("surrogate_mae"),
        "surrogate_within_1sigma": m.get("surrogate_within_1sigma"),
        "seconds": round(seconds, 1),
        "step_seconds": steps or {},
        "rss_mb": rss,
        "peak_rss_mb": peak,
    }


def fake_rounds(strategy: str, scale: dict) -> list[dict]:
    """``--schema``: rounds with the shape of real ones (nothing relaxed)."""
    metrics = {"relaxed": 1, "allocation": {"asked": {strategy: 1}}, "surrogate_mae": 0.0,
               "surrogate_within_1sigma": 0.0}  # fmt: skip
    steps = dict.fromkeys(("generate", "screen", "relax", "evaluate", "verify", "learn"), 0.0)
    return [round_record(r + 1, metrics, 0.0, steps) for r in range(scale["rounds"])]


def run_campaigns(runs: dict, scale: dict, jobs: int = 1) -> None:
    """Every seed, every strategy. One process: on one ``memory://`` store (references
    relaxed once); with ``jobs`` > 1, campaigns run side by side in worker processes, each
    on its own store."""
    tasks = [(strategy, seed) for seed in scale["seeds"] for strategy in scale["strategies"]]
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(run_campaign, strategy, seed, scale)
                       for strategy, seed in tasks]  # fmt: skip
            results = [f.result() for f in futures]
    else:
        from matloop.store import MatloopStore

        store = MatloopStore("memory://")
        results = [run_campaign(strategy, seed, scale, store) for strategy, seed in tasks]
    for (strategy, _), result in zip(tasks, results, strict=True):
        runs[strategy].append(result)


def run_campaign(strategy: str, seed: int, scale: dict, store=None) -> dict:
    """One campaign of ``strategy`` at ``seed``: its rounds and final discoveries."""
    from matloop.config import parse_config
    from matloop.loop import CampaignRun, Progress
    from matloop.loop.campaign import STEPS
    from matloop.store import MatloopStore

    store = store if store is not None else MatloopStore("memory://")
    quiet = Progress(message=lambda text: None)
    config = parse_config(strategy_config(strategy, seed, scale), source=strategy)
    run = CampaignRun(config, store=store, progress=quiet)
    start = time.perf_counter()
    run.prepare_references()
    print(f"seed {seed} {strategy}: references ready in "
          f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    rounds = []
    for _ in range(scale["rounds"]):
        start = time.perf_counter()
        doc, steps = run.start_round(), {}
        for name in STEPS:  # as run_round, timed step by step
            begun = time.perf_counter()
            run.step(name, doc.round)
            steps[name] = round(time.perf_counter() - begun, 1)
        doc = run.context.round(doc.round)
        rounds.append(round_record(doc.round, doc.metrics, time.perf_counter() - start,
                                   steps))
        r = rounds[-1]
        print(f"seed {seed} {strategy:16s} round {doc.round}: {r['hits']} hits / "
              f"{r['relaxed'] + r['failed']} relaxed, repeats "
              f"{r['duplicate_share']:.0%}, allocation "
              f"{ {g['generator']: g['proposals_asked'] for g in r['generators']} } "
              f"proposed {doc.metrics.get('proposed_by')}, known skipped "
              f"{doc.metrics.get('known_skipped_by_generator')} "
              f"({r['seconds']} s, peak {r['peak_rss_mb']} MB, load "
              f"{os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    final = final_discoveries(store, run.name, config.objective.stability_threshold)
    return {"rounds": rounds, "final_discoveries": final}


def final_discoveries(store, name: str, threshold: float) -> int:
    """Discoveries against the campaign's last hull: novel, unique, within ``threshold``
    (a round's hits can drop off the hull when a later round finds something lower)."""
    return sum(e.is_novel and e.is_unique and e.e_above_hull <= threshold
               for e in store.evaluations(name))  # fmt: skip


def _mean_std(values) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": arr.mean(0).tolist(), "std": arr.std(0).tolist()}


def summarise(runs: dict) -> dict:
    """Per strategy: discoveries per 100 relaxations per round and cumulative discoveries
    (mean and std over seeds), repeats, and the runs themselves."""
    summary = {}
    for strategy, per_seed in runs.items():
        if not per_seed:
            continue
        rate = [[r["discoveries_per_100"] for r in s["rounds"]] for s in per_seed]
        cumulative = [np.cumsum([r["hits"] for r in s["rounds"]]).tolist() for s in per_seed]
        repeats = [[r["duplicate_share"] for r in s["rounds"]] for s in per_seed]
        first = np.mean([r[0] for r in rate])
        summary[strategy] = {
            "discoveries_per_100_relaxations": _mean_std(rate),
            "cumulative_discoveries": _mean_std(cumulative),
            "final_discoveries": _mean_std([s["final_discoveries"] for s in per_seed]),
            "duplicate_share": _mean_std(repeats),
            "last_over_first_round": float(np.mean([r[-1] for r in rate]) / first)
            if first else None,
            "seconds_per_round": _mean_std([[r["seconds"] for r in s["rounds"]]
                                            for s in per_seed]),  # fmt: skip
            "runs": per_seed,
        }
    return summary


def targets(summary: dict) -> dict:
    """The issue's targets, checked on these numbers (None: a strategy did not run)."""
    full = summary.get("full_loop")
    if full is None:
        return {}
    rate = full["discoveries_per_100_relaxations"]["mean"]
    total = full["cumulative_discoveries"]["mean"][-1]

    def ratio(name: str) -> float | None:
        other = summary.get(name)
        if other is None:
            return None
        base = other["cumulative_discoveries"]["mean"][-1]
        return float(total / base) if base else None

    return {
        "rising": bool(max(rate) > rate[0] and full["last_over_first_round"] is not None
                       and full["last_over_first_round"] >= 1.5),
        "vs_random_symmetric": ratio("random_symmetric"),
        "vs_substitution": ratio("substitution"),
        "vs_no_learning": ratio("no_learning"),
        "last_round_duplicate_share": full["duplicate_share"]["mean"][-1],
        "goal": "rising (last round >= 1.5x the first), >= 1.5x random_symmetric, >= 1.2x "
                "substitution, <= 20 % repeats in the last round",
    }


def realistic_benchmark(args) -> dict:
    """The realistic section. With ``args.schema``: fake rounds, nothing trained or relaxed."""
    import torch

    torch.set_num_threads(args.threads)
    scale = {
        "rounds": args.rounds or 6,
        "candidates_per_round": args.proposals or 256,
        "relaxations_per_round": args.relaxations or 64,
        "seeds": list(args.seeds),
        "strategies": list(args.strategies or STRATEGIES),
        "vae_epochs": args.vae_epochs or 60,
        # the campaign file's own unless --acquisition says otherwise
        "acquisition": getattr(args, "acquisition", None)
        or base_config()["acquisition"]["strategy"],
    }
    start_all = time.perf_counter()
    runs: dict[str, list[dict]] = {s: [] for s in scale["strategies"]}
    if args.schema:
        for strategy in scale["strategies"]:
            runs[strategy] = [{"rounds": fake_rounds(strategy, scale), "final_discoveries": 0}
                              for _ in scale["seeds"]]  # fmt: skip
    else:
        data = shared_data(args.shared_data)
        checkpoint = train_vae(data, scale["vae_epochs"], args.cache_dir)
        # the campaign file names its data and checkpoint through these variables
        os.environ["MATLOOP_SHARED_DATA"] = str(data)
        os.environ["MATLOOP_CHECKPOINTS"] = str(checkpoint.parent)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_campaigns(runs, scale, jobs=getattr(args, "jobs", 1))
    summary = summarise(runs)
    # beside the JSON it goes with: a run with its own --output keeps its own plot
    output = getattr(args, "output", None)
    plot = (str(Path(output).with_suffix(".png")) if output
            else "benchmarks/results/discovery_realistic.png")
    if not args.schema:
        plot_rounds(summary, ROOT / plot if not Path(plot).is_absolute() else Path(plot))
    return {
        "scale": {**scale, "campaign": str(CAMPAIGN.relative_to(ROOT)),
                  "wall_s": round(time.perf_counter() - start_all),
                  "torch_threads": args.threads},  # fmt: skip
        "discovery": "novel against the reference crystals (MP and OQMD samples), unique, "
        "within 0.1 eV/atom of the campaign's CHGNet hull, as judged in its round",
        "strategies": summary,
        "targets": targets(summary),
        "plot": plot,
    }


def plot_rounds(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for strategy, s in summary.items():
        mean = np.array(s["discoveries_per_100_relaxations"]["mean"])
        std = np.array(s["discoveries_per_100_relaxations"]["std"])
        x = np.arange(1, len(mean) + 1)
        axes[0].errorbar(x, mean, yerr=std, marker="o", capsize=3, label=strategy)
        cm = np.array(s["cumulative_discoveries"]["mean"])
        cs = np.array(s["cumulative_discoveries"]["std"])
        axes[1].errorbar(x, cm, yerr=cs, marker="o", capsize=3, label=strategy)
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("round")
    axes[0].set_ylabel("discoveries per 100 relaxations")
    axes[1].set_ylabel("cumulative discoveries")
    axes[0].legend(fontsize=8)
    fig.suptitle("Li-Co-Mn-O, cells <= 20 atoms, CHGNet (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
