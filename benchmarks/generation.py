"""Generation benchmark on perov-5: train each torch generator, score samples with CDVAE's metrics.

Trains on a fixed 80% of ``perov_5/val.csv.gz`` (seed 0) and scores against the other 20%:

* validity (structural, compositional) over all ``--n-samples`` samples, with the model's
  default decoding (crystal models snap near-symmetric cells, see ``torch_crystal``) and,
  for comparison, ``struct_valid_nosnap`` with snapping switched off; no sample is ever
  filtered out (``n_sampled`` says how many came back);
* novelty / uniqueness by reduced formula (``novel_formula``: not a training formula);
* COV-R / COV-P (CDVAE's perov-5 cut-offs struc 0.2, comp 4). The Magpie standardisation
  matters: CDVAE uses fixed statistics of a broad data set; ``cov_recall`` /
  ``cov_precision`` here use statistics fitted on the 2,473 Materials Project formulas of
  ``known_crystals_mp.csv.gz`` (broad, like CDVAE's), ``*_heldout_scaler`` the statistics of
  the perov-5 held-out set (narrow: larger distances, lower coverage). The row
  ``training_data`` scores ``--n-cov`` training crystals as if they were samples: the
  ceiling any generator reaches with this split, sample size and fingerprints;
* Wasserstein distances of
  density, number of elements and ``dir_gap`` (from a surrogate model) over a random subset of
  ``--n-cov`` samples (CrystalNN costs ~65 ms a crystal; CDVAE fingerprints all 10,000);
* ``cov_*_comp``: COV on the Magpie composition fingerprints alone (the only coverage that
  applies to composition models; for crystal models an upper bound of their COV);
* reconstruction match rate / RMS over the held-out 20% for models with an encoder, with the
  default latent refinement (``recon_refine_steps``) and, as ``*_encoder_only``, without;
* composition models (``composition_*``) make compositions and borrow a training crystal
  as template for each: struct validity, structural COV, reconstruction and the density
  distance are not applicable (``not_applicable`` in their row says why); they report comp
  validity, novelty / uniqueness, ``cov_*_comp`` and the number-of-elements distance;
* for conditional models, the fraction of samples whose ``dir_gap`` lands in the asked window,
  conditioned vs. unconditioned, by the surrogate and (``window_lookup``) by the DFT value of
  samples whose composition is a perov-5 crystal.

Results are merged into ``benchmarks/results/generation.json`` (one entry per model, with the
command that made it; rows are merged at write time, so two runs with different ``--models``
may share the file) and printed as a table. Example::

    python benchmarks/generation.py --models crystal_cvae crystal_latent_opt --threads 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "generation.json"
PUBLISHED_CDVAE = {
    "struct_valid": 1.0,
    "comp_valid": 0.9859,
    "cov_recall": 0.9945,
    "cov_precision": 0.9846,
    "match_rate": 0.9752,
    "rms_dist": 0.0356,
    "wdist_density": 0.1258,
    "wdist_num_elems": 0.0628,
}
WINDOW = (1.5, 2.5)
COMPOSITION_NA = {
    "struct_valid": "crystals are training templates re-decorated with the sampled "
    "composition: structural validity measures the template bank, not the model",
    "cov_recall/cov_precision": "need a structure fingerprint of the model's own structure; "
    "cov_*_comp (composition fingerprints only) are reported instead",
    "match_rate": "no structure is encoded or decoded",
    "wdist_density": "density comes from the template and fitted atomic volumes",
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--csv", type=Path, default=None,
                   help="perov-5 CSV of the default mode (default: the shared data's)")
    p.add_argument("--dataset", choices=["perov_5", "carbon_24", "realistic"], default=None,
                   help="held-out benchmark of generation_split.py on this preset split")
    p.add_argument("--train", type=Path, default=None, help="train CSV (held-out mode)")
    p.add_argument("--test", type=Path, default=None, help="test CSV (held-out mode)")
    p.add_argument("--n", type=int, default=1000, help="samples per model (held-out mode)")
    p.add_argument("--n-test", type=int, default=None,
                   help="score against a random subset of this many test crystals")
    p.add_argument("--checkpoint-dir", default=None, help="reuse / keep trained models here")
    p.add_argument("--retrain", action="store_true", help="ignore checkpoints in --checkpoint-dir")
    p.add_argument("--setting", action="append", help="KEY=VALUE model setting (repeatable)")
    p.add_argument("--note", default=None, help="recorded in the results file")
    p.add_argument("--shared-data", default=None, help="shared data folder (default: ../shared)")
    p.add_argument(
        "--models",
        nargs="*",
        default=[
            "crystal_vae",
            "crystal_cvae",
            "crystal_latent_opt",
            "crystal_cgan",
            "composition_vae",
            "composition_cvae",
            "composition_wgan",
        ],
    )
    p.add_argument("--epochs", type=int, default=None, help="override every model's default")
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--n-cov", type=int, default=1_000)
    p.add_argument("--n-cond", type=int, default=1_000, help="samples per arm of the window test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--limit", type=int, default=None, help="read only the first rows (smoke runs)")
    p.add_argument(
        "--data-row", action="store_true", help="also score training crystals (the ceiling)"
    )
    p.add_argument("--schema", action="store_true",
                   help="held-out mode only: print the JSON it would write, from a few "
                   "synthetic crystals (one epoch, three samples), and write nothing")  # fmt: skip
    args = p.parse_args()
    if args.dataset or args.train:
        from generation_split import run

        run(args)
        return
    if args.schema:
        raise SystemExit("--schema covers the held-out mode (--dataset / --train) only")
    args.out = args.out or OUT
    if args.csv is None:
        from common import shared_data

        args.csv = shared_data(args.shared_data) / "perov_5" / "val.csv.gz"

    import torch

    from matloop.evaluators import generation_metrics as gm
    from matloop.generators.torch_common import read_structures_csv, split_indices
    from matloop.generators.training import CONDITIONAL, generator_class

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if not args.csv.exists():
        raise SystemExit(f"data not found: {args.csv}")
    structures, props = read_structures_csv(args.csv, ["dir_gap"], limit=args.limit)
    tr, te = split_indices(len(structures), 0.8, args.seed)
    train = [structures[i] for i in tr]
    test = [structures[i] for i in te]
    gap_tr, gap_te = props["dir_gap"][tr], props["dir_gap"][te]

    t0 = time.perf_counter()
    ref_struc, ref_comp = gm.fingerprints(test)
    print(
        f"reference fingerprints: {len(test)} crystals, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    # Surrogate dir_gap: Magpie + density (no CrystalNN, to keep it cheap on 3,000 crystals).
    tr_comp = np.array([gm.composition_fingerprint(s) for s in train])
    surrogate = gm.SurrogateProperty(seed=args.seed).fit(
        train, gap_tr, struc_fps=[None] * len(train), comp_fps=tr_comp
    )
    pred_te = surrogate.predict(test, struc_fps=[None] * len(test), comp_fps=ref_comp)
    in_te = (gap_te >= WINDOW[0]) & (gap_te <= WINDOW[1])
    in_pred = (pred_te >= WINDOW[0]) & (pred_te <= WINDOW[1])
    surrogate_info = {
        "features": "Magpie + density + volume/atom, random forest",
        "mae_test": float(np.abs(pred_te - gap_te).mean()),
        "window": list(WINDOW),
        "window_rate_test_true": float(in_te.mean()),
        "window_rate_test_pred": float(in_pred.mean()),
        "window_recall_test": float((in_te & in_pred).sum() / max(in_te.sum(), 1)),
        "window_precision_test": float((in_te & in_pred).sum() / max(in_pred.sum(), 1)),
    }
    print("surrogate:", surrogate_info, flush=True)

    def gap_of(samples):
        return surrogate.predict(
            samples,
            struc_fps=[None] * len(samples),
            comp_fps=np.array([gm.composition_fingerprint(s) for s in samples]),
        )

    mp_csv = args.csv.parent.parent / "known_crystals_mp.csv.gz"
    broad_scaler = None
    if mp_csv.exists():
        import pandas as pd
        from pymatgen.core import Composition

        formulas = pd.read_csv(mp_csv, usecols=["formula"])["formula"]
        broad_scaler = gm.CompScaler.fit(
            np.array([gm.composition_fingerprint(Composition(f)) for f in formulas])
        )
    train_formulas = {s.composition.reduced_formula for s in train}
    cutoffs = {f"{k}_cutoff": v for k, v in gm.COV_CUTOFFS["perov_5"].items()}

    def cov(g_struc, g_comp) -> dict:
        heldout = gm.coverage_from_fingerprints(g_struc, g_comp, ref_struc, ref_comp, **cutoffs)
        out = {f"{k}_heldout_scaler": v for k, v in heldout.items()}
        if broad_scaler is not None:
            out.update(
                gm.coverage_from_fingerprints(
                    g_struc, g_comp, ref_struc, ref_comp, **cutoffs, comp_scaler=broad_scaler
                )
            )
        return out

    def comp_cov(g_comp) -> dict:
        return gm.composition_coverage(
            g_comp, ref_comp, gm.COV_CUTOFFS["perov_5"]["comp"], comp_scaler=broad_scaler
        )

    def novelty(samples) -> dict:
        formulas = [x.composition.reduced_formula for x in samples]
        return {
            "novel_formula": float(np.mean([f not in train_formulas for f in formulas])),
            "unique_formula": len(set(formulas)) / max(len(formulas), 1),
        }

    known_gap: dict[str, float] = {}
    for s, g in zip(structures, props["dir_gap"], strict=True):
        known_gap.setdefault(s.composition.reduced_formula, float(g))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("models", {})
    results["setup"] = {
        "data": str(args.csv),
        "n_train": len(train),
        "n_test": len(test),
        "seed": args.seed,
        "n_samples": args.n_samples,
        "n_cov": args.n_cov,
        "threads": args.threads,
        "cov_cutoffs": gm.COV_CUTOFFS["perov_5"],
        "cov_comp_scaler": (
            f"Magpie statistics of {mp_csv.name} ({len(formulas)} formulas)"
            if broad_scaler is not None
            else None
        ),
        "cov_comp_scaler_heldout": "Magpie statistics of the perov-5 held-out set",
        "surrogate": surrogate_info,
        "published_cdvae_perov5": PUBLISHED_CDVAE,
    }
    if args.data_row:
        rng = np.random.default_rng(args.seed)
        pick = rng.choice(len(train), size=min(args.n_cov, len(train)), replace=False)
        sub = [train[i] for i in pick]
        d_struc, d_comp = gm.fingerprints(sub)
        row = {
            "command": shlex.join(["python", *sys.argv]),
            "n_sampled": len(sub),
            **gm.validity_rates(sub),
            **cov(d_struc, d_comp),
            **comp_cov(d_comp),
        }
        results = save_row(args.out, results, "training_data", row)
        print("training_data", row, flush=True)
    for kind in args.models:
        print(f"== {kind}", flush=True)
        cls = generator_class(kind)
        cond = kind in CONDITIONAL
        kwargs = {
            "property_columns": ["dir_gap"] if cond else [],
            "seed": args.seed,
            "device": args.device,
        }
        if args.epochs is not None:
            kwargs["epochs"] = args.epochs
        gen = cls(**kwargs)
        t = time.perf_counter()
        gen.fit(train, {"dir_gap": gap_tr} if cond else None)
        train_s = time.perf_counter() - t
        rng = np.random.default_rng(args.seed)
        t = time.perf_counter()
        samples = gen.sample(args.n_samples, rng=rng)
        sample_s = time.perf_counter() - t
        row: dict = {
            "command": shlex.join(["python", *sys.argv]),
            "threads": args.threads,
            "train_seconds": train_s,
            "sample_seconds": sample_s,
            "n_sampled": len(samples),
            "config": {
                k: v
                for k, v in gen.config.items()
                if k not in {"templates", "lattice_stats", "property_stats", "atomic_volume"}
            },
        }
        row.update(gm.validity_rates(samples + [None] * (args.n_samples - len(samples))))
        if samples:
            row.update(novelty(samples))
        if gen.config.get("snap"):
            gen.config["snap"] = False
            raw = gen.sample(args.n_samples, rng=np.random.default_rng(args.seed))
            gen.config["snap"] = True
            row["struct_valid_nosnap"] = gm.validity_rates(
                raw + [None] * (args.n_samples - len(raw))
            )["struct_valid"]
        if not samples:
            results = save_row(args.out, results, kind, row)
            print(f"{kind}: no samples", flush=True)
            continue
        sub_idx = rng.choice(len(samples), size=min(args.n_cov, len(samples)), replace=False)
        sub = [samples[i] for i in sub_idx]
        t = time.perf_counter()
        if kind.startswith("composition"):
            # A composition model's crystals are training crystals re-decorated with its
            # compositions: structural metrics would score the template bank, not the model.
            for key in ("struct_valid", "valid"):
                row.pop(key, None)
            row["not_applicable"] = COMPOSITION_NA
            g_comp = np.array([gm.composition_fingerprint(s) for s in sub])
            row.update(comp_cov(g_comp))
            row["wdist_num_elems"] = gm.distribution_metrics(sub, test)["wdist_num_elems"]
        else:
            g_struc, g_comp = gm.fingerprints(sub)
            row.update(cov(g_struc, g_comp))
            row.update(comp_cov(g_comp))
            valid = [s for s in sub if gm.structure_validity(s) and gm.composition_validity(s)]
            if valid:
                row.update(gm.distribution_metrics(valid, test, gap_of(valid), pred_te))
        row["metric_seconds"] = time.perf_counter() - t
        if hasattr(gen, "reconstruct") and kind.startswith("crystal") and kind != "crystal_cgan":
            # Encoder-decoder round trip, then the default (latents refined on the decoding
            # loss, ``recon_refine_steps``; see CrystalVAEGenerator.refine_latents).
            rec = gen.reconstruct(test, {"dir_gap": gap_te}, refine_steps=0)
            plain = gm.reconstruction_metrics(rec, test)
            row["match_rate_encoder_only"] = plain["match_rate"]
            row["rms_dist_encoder_only"] = plain["rms_dist"]
            rec = gen.reconstruct(test, {"dir_gap": gap_te})
            row.update(gm.reconstruction_metrics(rec, test))
        elif kind == "crystal_cgan":
            row["not_applicable"] = {"match_rate": "a GAN has no encoder"}
        if cond:
            n = args.n_cond
            uncond = gen.sample(n, rng=np.random.default_rng(args.seed + 1))
            asked = gen.sample(n, {"dir_gap": WINDOW}, rng=np.random.default_rng(args.seed + 2))
            g_u, g_a = gap_of(uncond), gap_of(asked)
            hit_u = float(np.mean((g_u >= WINDOW[0]) & (g_u <= WINDOW[1])))
            hit_a = float(np.mean((g_a >= WINDOW[0]) & (g_a <= WINDOW[1])))

            # Look-up oracle: samples whose composition is a perov-5 crystal get its DFT gap.
            def lookup(samples):
                gaps = [known_gap.get(x.composition.reduced_formula) for x in samples]
                return np.array([g for g in gaps if g is not None])

            k_u, k_a = lookup(uncond), lookup(asked)
            row["window_lookup"] = {
                "known_fraction_unconditioned": len(k_u) / max(len(uncond), 1),
                "known_fraction_conditioned": len(k_a) / max(len(asked), 1),
                "hit_unconditioned": float(np.mean((k_u >= WINDOW[0]) & (k_u <= WINDOW[1])))
                if len(k_u)
                else None,
                "hit_conditioned": float(np.mean((k_a >= WINDOW[0]) & (k_a <= WINDOW[1])))
                if len(k_a)
                else None,
            }
            row["window"] = {
                "window": list(WINDOW),
                "hit_unconditioned": hit_u,
                "hit_conditioned": hit_a,
                "enrichment": hit_a / hit_u if hit_u > 0 else None,
                "valid_conditioned": gm.validity_rates(asked)["valid"],
                "mean_gap_conditioned": float(g_a.mean()),
                "mean_gap_unconditioned": float(g_u.mean()),
            }
        results = save_row(args.out, results, kind, row)
        print({k: v for k, v in row.items() if k != "config"}, flush=True)
    print_table(results)


def save_row(out: Path, results: dict, kind: str, row: dict) -> dict:
    """Merge ``row`` into the JSON on disk as it is now (another run may have added rows
    since this one started) and return the merged results."""
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged.setdefault("models", {})[kind] = row
    merged["setup"] = results["setup"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2, default=float))
    return merged


def print_table(results: dict) -> None:
    cols = [
        "struct_valid",
        "comp_valid",
        "novel_formula",
        "cov_recall",
        "cov_precision",
        "cov_recall_heldout_scaler",
        "cov_precision_heldout_scaler",
        "cov_recall_comp",
        "cov_precision_comp",
        "match_rate_encoder_only",
        "match_rate",
        "rms_dist",
        "wdist_density",
        "wdist_num_elems",
        "train_seconds",
        "sample_seconds",
    ]
    short = {
        "cov_recall_heldout_scaler": "covR_heldout",
        "cov_precision_heldout_scaler": "covP_heldout",
        "novel_formula": "novel",
        "cov_recall_comp": "covR_comp",
        "cov_precision_comp": "covP_comp",
        "match_rate_encoder_only": "match_enc",
    }
    print(
        f"{'model':22s}"
        + "".join(f"{short.get(c, c)[:13]:>14s}" for c in cols)
        + f"{'window hit c/u (x)':>24s}"
    )
    rows = dict(results["models"])
    rows["CDVAE (published)"] = results["setup"]["published_cdvae_perov5"]
    for name, row in rows.items():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append(
                f"{v:14.4f}" if isinstance(v, (int, float)) and v is not None else f"{'-':>14s}"
            )
        w = row.get("window")
        wtxt = "-"
        if w:
            x = f"{w['enrichment']:.1f}x" if w.get("enrichment") is not None else "n/a"
            wtxt = f"{w['hit_conditioned']:.3f}/{w['hit_unconditioned']:.3f} ({x})"
        print(f"{name:22s}" + "".join(cells) + f"{wtxt:>24s}")


if __name__ == "__main__":
    main()
