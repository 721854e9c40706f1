"""The CHGNet part of ``benchmarks/discovery.py``: whole campaigns, real relaxations.

Every strategy searches the same chemical space with the same proposals and relaxations per
round, the same relaxer, acquisition and seed crystals, for the same seeds, through
:meth:`CampaignRun.run_round` (no Prefect). All campaigns share one ``memory://`` store, so
the elemental and seed references are relaxed once and every campaign's hull starts from
the same references. Strategies:

* ``random_symmetric``, ``prototype_substitution``: the baselines;
* ``vae_finetune``: a crystal VAE trained on the MP and OQMD crystals of
  ../shared/data with at most ``max_atoms`` sites (``--vae-csv`` for other data; a VAE
  trained on perov-5's 5-atom perovskites has almost no support in Ca–Ti–O), elements masked
  to the space at decoding; ``screen_proposals``: charge-unbalanced and repeated draws are
  redrawn, as the baselines never propose them; ``update: finetune`` (reward-weighted
  fine-tuning with replay);
* ``vae_reinforce``: the same checkpoint, ``update: reinforce`` (REINFORCE on its sampling
  policy, KL penalty to the pre-trained sampler).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from common import content_hash, shared_data

STRATEGIES = ("random_symmetric", "prototype_substitution", "vae_finetune", "vae_reinforce")
SEED_CRYSTALS = "known_crystals_mp.csv.gz"
KNOWN = ("known_crystals_mp.csv.gz", "known_crystals_oqmd.csv.gz")
VAE = {"hidden": 128, "latent_dim": 32, "seed": 0}


def _required(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data missing: {path}")
    return path


def known_crystals_csv(data: Path, max_atoms: int, cache_dir: Path) -> Path:
    """Every MP and OQMD crystal of the shared data with at most ``max_atoms`` sites, as one
    CSV in the cache (named by the content hash of its sources and ``max_atoms``): the
    learned generator's training data (broad structure types, all chemistries; elements are
    masked to the campaign's space at decoding)."""
    import pandas as pd

    sources = [_required(data / name) for name in KNOWN]
    path = cache_dir / f"known_le{max_atoms}_{content_hash(*sources, max_atoms)}.csv"
    if not path.is_file():
        frame = pd.concat([pd.read_csv(src) for src in sources])
        path.parent.mkdir(parents=True, exist_ok=True)
        frame[frame.nsites <= max_atoms][["material_id", "cif"]].to_csv(path, index=False)
    return path


def train_vae(csv: Path, epochs: int, cache_dir: Path) -> Path:
    """A crystal VAE on every row of ``csv``, cached under the content hash of the data and
    the training settings."""
    path = cache_dir / f"vae_{content_hash(csv, {'epochs': epochs, **VAE})}.pt"
    if path.is_file():
        return path
    from matloop.generators.training import train_model

    start = time.perf_counter()
    gen = train_model("crystal_vae", csv, epochs=epochs, device="cpu", **VAE)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen.save(path)
    print(f"trained crystal_vae on {csv.name} ({epochs} epochs) in "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return path


def campaign_config(strategy: str, seed: int, scale: dict, checkpoint: Path, seeds_csv: Path) -> dict:
    if strategy.startswith("vae_"):
        # screen_proposals: the VAE redraws charge-unbalanced and repeated crystals, as
        # the baselines' generators do by construction
        generator = {"name": "crystal_vae", "checkpoint": str(checkpoint),
                     "update": strategy.removeprefix("vae_"),
                     "settings": {"screen_proposals": True}}  # fmt: skip
    else:
        generator = {"name": strategy}
    return {
        "name": f"bench-{strategy}-s{seed}",
        "chemical_space": {"elements": scale["elements"], "max_atoms": scale["max_atoms"]},
        "objective": {"stability_threshold": 0.1},
        "generators": [generator],
        "relaxer": {"potential": "CHGNet", "fmax": 0.1, "steps": 200},
        "budget": {"rounds": scale["rounds"],
                   "candidates_per_round": scale["candidates_per_round"],
                   "relaxations_per_round": scale["relaxations_per_round"]},  # fmt: skip
        "acquisition": {"strategy": "ucb", "beta": 1.0, "ensemble_size": 4},
        "seed_data": {"files": [{"path": str(seeds_csv)}]},
        "store": "memory://",
        "seed": seed,
    }


def round_record(round_: int, m: dict, seconds: float) -> dict:
    """What the benchmark keeps of one round's metrics."""
    attempted = m.get("relaxed", 0) + m.get("failed", 0)
    return {
        "round": round_,
        "proposed": m.get("proposed", 0),
        "rejected": m.get("rejected", 0),
        "relaxed": m.get("relaxed", 0),
        "failed": m.get("failed", 0),
        "hits": m.get("hits", 0),
        "hit_rate": m.get("hits", 0) / attempted if attempted else 0.0,
        "stable": m.get("stable", 0),
        "mean_reward_per_proposal": m.get("mean_reward_per_proposal", {}),
        "surrogate_mae": m.get("surrogate_mae"),
        "seconds": round(seconds, 1),
    }


def chgnet_benchmark(args) -> dict:
    """The CHGNet section. With ``args.schema``: fake rounds, nothing trained or relaxed."""
    import torch

    torch.set_num_threads(args.threads)
    scale = {
        "elements": ["Ca", "Ti", "O"],
        "max_atoms": 5,
        "rounds": args.rounds or (3 if args.quick else 5),
        "candidates_per_round": args.proposals or (24 if args.quick else 40),
        "relaxations_per_round": args.relaxations or (6 if args.quick else 10),
        "seeds": list(args.seeds[:2]) if args.quick else list(args.seeds),
        "vae_epochs": args.vae_epochs or (40 if args.quick else 100),
    }
    start_all = time.perf_counter()
    runs: dict[str, list[list[dict]]] = {s: [] for s in STRATEGIES}
    if args.schema:
        training, seeds_csv = Path("known.csv"), Path(SEED_CRYSTALS)
        for strategy in STRATEGIES:
            generator = "crystal_vae" if strategy.startswith("vae_") else strategy
            fake = {"mean_reward_per_proposal": {generator: 0.0}}
            runs[strategy] = [[round_record(r + 1, fake, 0.0) for r in range(scale["rounds"])]
                              for _ in scale["seeds"]]  # fmt: skip
    else:
        data = shared_data(args.shared_data)
        seeds_csv = _required(data / SEED_CRYSTALS)
        training = args.vae_csv or known_crystals_csv(data, scale["max_atoms"], args.cache_dir)
        checkpoint = train_vae(training, scale["vae_epochs"], args.cache_dir)
        run_campaigns(runs, scale, checkpoint, seeds_csv)
    summary = summarise(runs)
    plot = "benchmarks/results/discovery_hit_rate.png"
    if not args.schema:
        plot_rounds(summary, Path(__file__).resolve().parents[1] / plot)
    return {
        "scale": {**scale, "quick": bool(args.quick),
                  "relaxer": "CHGNet, fmax 0.1 eV/Å, 200 steps", "acquisition": "ucb, beta 1",
                  "seed_crystals": seeds_csv.name,
                  "vae_training_data": training.name if args.vae_csv else
                  f"every MP and OQMD crystal of the shared data with at most "
                  f"{scale['max_atoms']} sites ({training.name})",
                  "wall_s": round(time.perf_counter() - start_all)},  # fmt: skip
        "hit": "novel, unique, within 0.1 eV/atom of the campaign's CHGNet hull (CHGNet "
        "energies are already on the MP2020 scale)",
        "strategies": summary,
        "plot": plot,
    }


def run_campaigns(runs: dict, scale: dict, checkpoint: Path, seeds_csv: Path) -> None:
    """Every strategy, every seed, on one ``memory://`` store (references relaxed once)."""
    from matloop.config import parse_config
    from matloop.loop import CampaignRun, Progress
    from matloop.store import MatloopStore

    store = MatloopStore("memory://")
    quiet = Progress(message=lambda text: None)
    for seed in scale["seeds"]:
        for strategy in STRATEGIES:
            config = parse_config(campaign_config(strategy, seed, scale, checkpoint, seeds_csv))
            run = CampaignRun(config, store=store, progress=quiet)
            run.prepare_references()
            rounds = []
            for _ in range(scale["rounds"]):
                start = time.perf_counter()
                doc = run.run_round()
                rounds.append(round_record(doc.round, doc.metrics, time.perf_counter() - start))
                r = rounds[-1]
                print(f"seed {seed} {strategy:24s} round {doc.round}: hits {r['hits']}"
                      f"/{r['relaxed'] + r['failed']} relaxed, {r['rejected']} rejected "
                      f"({r['seconds']} s)", flush=True)  # fmt: skip
            runs[strategy].append(rounds)


def summarise(runs: dict[str, list[list[dict]]]) -> dict:
    """Hit rate per round and cumulative hits, mean and std over seeds, per strategy.

    A round in which a strategy relaxed nothing (a generator that ran out of proposals) has
    no hit rate: it is left out of that round's mean (``n_seeds_with_relaxations`` says how
    many seeds count), not counted as 0.
    """
    summary = {}
    for strategy, per_seed in runs.items():
        rates = np.array([
            [r["hits"] / (r["relaxed"] + r["failed"]) if r["relaxed"] + r["failed"] else np.nan
             for r in rounds]
            for rounds in per_seed
        ])  # fmt: skip
        cumulative = np.array([np.cumsum([r["hits"] for r in rounds]) for rounds in per_seed])
        counted = np.isfinite(rates).sum(0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rounds
            mean, std = np.nanmean(rates, 0), np.nanstd(rates, 0)
        summary[strategy] = {
            "hit_rate_per_round": {
                "mean": [None if np.isnan(v) else float(v) for v in mean],
                "std": [None if np.isnan(v) else float(v) for v in std],
                "n_seeds_with_relaxations": counted.tolist(),
            },
            "cumulative_hits": {"mean": cumulative.mean(0).tolist(),
                                "std": cumulative.std(0).tolist()},  # fmt: skip
            "relaxations_per_round": {
                "mean": np.mean([[r["relaxed"] + r["failed"] for r in rounds]
                                 for rounds in per_seed], 0).tolist(),
            },  # fmt: skip
            "runs": per_seed,
        }
    return summary


def plot_rounds(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for strategy, s in summary.items():
        mean = np.array(s["hit_rate_per_round"]["mean"], dtype=float)  # None -> nan: a gap
        std = np.array(s["hit_rate_per_round"]["std"], dtype=float)
        x = np.arange(1, len(mean) + 1)
        axes[0].errorbar(x, mean, yerr=std, marker="o", capsize=3, label=strategy)
        cm = np.array(s["cumulative_hits"]["mean"])
        axes[1].plot(x, cm, marker="o", label=strategy)
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("hit rate (hits / relaxations)")
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("cumulative hits")
    axes[0].legend(fontsize=8)
    fig.suptitle("CHGNet campaigns in Ca–Ti–O (mean ± std over seeds; gaps: nothing left to relax)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
