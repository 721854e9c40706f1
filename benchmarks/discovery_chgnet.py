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

STRATEGIES = ("random_symmetric", "prototype_substitution", "vae_finetune", "vae_reinforce")
MP_SEEDS = Path("/work/shared/data/known_crystals_mp.csv.gz")
OQMD = Path("/work/shared/data/known_crystals_oqmd.csv.gz")


def known_crystals_csv(max_atoms: int) -> Path:
    """Every MP and OQMD crystal of ../shared/data with at most ``max_atoms`` sites, as one
    CSV outside the repository: the learned generator's training data (broad structure
    types, all chemistries; elements are masked to the campaign's space at decoding)."""
    import pandas as pd

    path = Path(f"/tmp/matloop-bench/mp_oqmd_le{max_atoms}.csv")
    if not path.is_file():
        frame = pd.concat([pd.read_csv(MP_SEEDS), pd.read_csv(OQMD)])
        path.parent.mkdir(parents=True, exist_ok=True)
        frame[frame.nsites <= max_atoms][["material_id", "cif"]].to_csv(path, index=False)
    return path


def train_vae(csv: Path, path: Path, epochs: int, seed: int = 0) -> Path:
    """A crystal VAE on every row of ``csv`` (cached at ``path``)."""
    if path.is_file():
        return path
    from matloop.generators.training import train_model

    start = time.perf_counter()
    gen = train_model("crystal_vae", csv, epochs=epochs, seed=seed, hidden=128, latent_dim=32,
                      device="cpu")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    gen.save(path)
    print(f"trained crystal_vae on {csv.name} ({epochs} epochs) in "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return path


def campaign_config(strategy: str, seed: int, scale: dict, checkpoint: Path) -> dict:
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
        "seed_data": {"files": [{"path": str(MP_SEEDS)}]} if MP_SEEDS.is_file() else {},
        "store": "memory://",
        "seed": seed,
    }


def chgnet_benchmark(args) -> dict:
    from matloop.config import parse_config
    from matloop.loop import CampaignRun, Progress
    from matloop.store import MatloopStore

    scale = {
        "elements": ["Ca", "Ti", "O"],
        "max_atoms": 5,
        "rounds": args.rounds or (3 if args.quick else 5),
        "candidates_per_round": args.proposals or (24 if args.quick else 40),
        "relaxations_per_round": args.relaxations or (6 if args.quick else 10),
        "seeds": list(args.seeds[:2]) if args.quick else list(args.seeds),
        "vae_epochs": 40 if args.quick else 100,
    }
    training = args.vae_csv or known_crystals_csv(scale["max_atoms"])
    scale["vae_training_data"] = str(training)
    data = training.name.split(".")[0]
    cached = Path(f"/tmp/matloop-bench/vae_{training.parent.name}_{data}_e{scale['vae_epochs']}.pt")
    checkpoint = train_vae(training, cached, scale["vae_epochs"])
    store = MatloopStore("memory://")
    quiet = Progress(message=lambda text: None)
    runs: dict[str, list[list[dict]]] = {s: [] for s in STRATEGIES}
    start_all = time.perf_counter()
    for seed in scale["seeds"]:
        for strategy in STRATEGIES:
            config = parse_config(campaign_config(strategy, seed, scale, checkpoint))
            run = CampaignRun(config, store=store, progress=quiet)
            run.prepare_references()
            rounds = []
            for _ in range(scale["rounds"]):
                start = time.perf_counter()
                doc = run.run_round()
                m = doc.metrics
                attempted = m.get("relaxed", 0) + m.get("failed", 0)
                rounds.append({
                    "round": doc.round,
                    "proposed": m.get("proposed", 0),
                    "rejected": m.get("rejected", 0),
                    "relaxed": m.get("relaxed", 0),
                    "failed": m.get("failed", 0),
                    "hits": m.get("hits", 0),
                    "hit_rate": m.get("hits", 0) / attempted if attempted else 0.0,
                    "stable": m.get("stable", 0),
                    "mean_reward_per_proposal": m.get("mean_reward_per_proposal", {}),
                    "surrogate_mae": m.get("surrogate_mae"),
                    "seconds": round(time.perf_counter() - start, 1),
                })
                print(f"seed {seed} {strategy:24s} round {doc.round}: hits {rounds[-1]['hits']}"
                      f"/{attempted} relaxed, {m.get('rejected', 0)} rejected "
                      f"({rounds[-1]['seconds']} s)", flush=True)  # fmt: skip
            runs[strategy].append(rounds)
    summary = summarise(runs)
    plot_rounds(summary, Path(args.output).parent / "discovery_hit_rate.png")
    return {
        "scale": {**scale, "quick": bool(args.quick),
                  "relaxer": "CHGNet, fmax 0.1 eV/Å, 200 steps", "acquisition": "ucb, beta 1",
                  "seed_crystals": MP_SEEDS.name,
                  "wall_s": round(time.perf_counter() - start_all)},  # fmt: skip
        "hit": "novel, unique, within 0.1 eV/atom of the campaign's CHGNet hull (CHGNet "
        "energies are already on the MP2020 scale)",
        "strategies": summary,
        "plot": "benchmarks/results/discovery_hit_rate.png",
    }


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
