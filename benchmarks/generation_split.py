"""Generation benchmark on crystals the model never trained on (``generation.py --dataset``).

Datasets (from the shared data folder, see ``common.shared_data``), split with seed 0:

* ``perov_5``: ``perov_5/val.csv.gz``, 80 % train / 20 % test (as ``generation.py``);
* ``carbon_24``: ``carbon_24/val.csv.gz``, 1,000 test crystals, the rest (1,032) train;
* ``realistic``: the MP + OQMD crystals of ``known_crystals_*.csv.gz`` with <= 20 atoms,
  80 % / 20 %.

``--train`` / ``--test`` (CSV files with a ``cif`` column) replace the preset's split.
``--schema`` runs the same code on a few synthetic crystals of the dataset's kind (one
training epoch, three samples, no checkpoint cache) and prints the JSON it would write.
Each model trains on the train part and samples ``--n`` crystals as a user would get them
(the models' soundness redraws on: every sample returned is sound); the model's raw draws
are summarised by its soundness tally (``sound_rate_raw``: the share of raw draws that
passed). ``--data-row`` scores ``--n`` test crystals against the train crystals as if they
were samples: the ceiling of COV at this sample count and fingerprints.

Metrics of the ``--n`` samples:

* ``struct_valid`` (CDVAE: pairs >= 0.5 Å, volume >= 0.1), ``comp_valid`` (SMACT);
* ``sound_share``: every pair >= 0.8 x the covalent radii sum (``matloop.soundness``);
  on Carbon-24 also ``cc_1p2_share`` (every C-C >= 1.2 Å) and the median closest pair;
* ``cif_readable``: pymatgen reads the written CIF back with all its sites;
* COV-R / COV-P against the test crystals (CDVAE's CrystalNN + Magpie fingerprints;
  cut-offs: perov-5 and carbon-24 struc 0.2 / comp 4, realistic MP-20's 0.4 / 10), the
  composition scaler fitted on the test crystals;
* ``uniqueness`` and ``novelty`` (not matching a training crystal) with pymatgen's default
  ``StructureMatcher``, compared only within one reduced formula and only where the
  CrystalNN fingerprints are within 1.0 (a pre-filter for speed: matched structures have
  near-equal fingerprints);
* ``train_seconds``, ``sample_seconds`` and the load average around them.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: Settings that change how a trained model samples (applied to a reused checkpoint).
SAMPLING = ("steps", "coord_anneal", "temperature", "soundness", "prior")

PRESETS = {
    "perov_5": {"cov": (0.2, 4.0)},
    "carbon_24": {"cov": (0.2, 4.0)},
    "realistic": {"cov": (0.4, 10.0)},
}


def load_split(dataset: str, data_dir: Path, seed: int = 0) -> tuple[list, list]:
    """``(train, test)`` structures of a preset dataset."""
    import pandas as pd
    from pymatgen.core import Structure

    from matloop.generators.torch_common import read_structures_csv, split_indices

    if dataset == "perov_5":
        s, _ = read_structures_csv(data_dir / "perov_5" / "val.csv.gz")
        tr, te = split_indices(len(s), 0.8, seed)
    elif dataset == "carbon_24":
        s, _ = read_structures_csv(data_dir / "carbon_24" / "val.csv.gz")
        order = np.random.default_rng(seed).permutation(len(s))
        te, tr = np.sort(order[:1000]), np.sort(order[1000:])
    elif dataset == "realistic":
        frames = [pd.read_csv(data_dir / f"known_crystals_{x}.csv.gz") for x in ("mp", "oqmd")]
        frame = pd.concat(frames, ignore_index=True)
        frame = frame[frame["nsites"] <= 20]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = [Structure.from_str(c, fmt="cif") for c in frame["cif"]]
        s = [x for x in s if len(x) <= 20 and x.is_ordered]
        tr, te = split_indices(len(s), 0.8, seed)
    else:
        raise SystemExit(f"unknown dataset {dataset!r}; known: {', '.join(PRESETS)}")
    return [s[i] for i in tr], [s[i] for i in te]


def schema_split(dataset: str, n: int = 16) -> tuple[list, list]:
    """``(train, test)``: ``n`` small synthetic crystals of the dataset's kind (diamond-like
    carbon for ``carbon_24``, ABO3 perovskites otherwise), for ``--schema``."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(0)
    crystals = []
    for i in range(n):
        if dataset == "carbon_24":
            frac = np.array([[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0], [0.75, 0.75, 0.25],
                             [0.5, 0, 0.5], [0.75, 0.25, 0.75], [0, 0.5, 0.5],
                             [0.25, 0.75, 0.75]])  # fmt: skip
            species, a = ["C"] * 8, rng.uniform(3.5, 3.7)
        else:
            frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5],
                             [0, 0.5, 0.5]])  # fmt: skip
            species, a = [("Sr", "Ba", "Ca")[i % 3], ("Ti", "Zr")[i % 2], "O", "O", "O"], 4.0
        lattice = Lattice.cubic(a * rng.uniform(0.97, 1.03))
        crystals.append(Structure(lattice, species, frac + rng.normal(0, 0.01, frac.shape)))
    return crystals[: 3 * n // 4], crystals[3 * n // 4 :]


def _distinct(structures: list, against: list | None = None) -> np.ndarray:
    """Per structure: True when it matches no earlier structure (``against is None``:
    uniqueness) or no structure of ``against`` (novelty), by pymatgen's default
    ``StructureMatcher``. Compared only within one reduced formula and one primitive-cell
    size (the matcher compares primitive cells, so other sizes never match)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()

    def key(s):
        return s.composition.reduced_formula, len(s.get_primitive_structure())

    out = np.ones(len(structures), dtype=bool)
    pool: dict[tuple, list] = {}
    for s in against or []:
        pool.setdefault(key(s), []).append(s)
    for i, s in enumerate(structures):
        k = key(s)
        group = pool.setdefault(k, []) if against is None else pool.get(k, [])
        if any(matcher.fit(s, other) for other in group):
            out[i] = False
        elif against is None:
            group.append(s)
    return out


def score(samples: list, n_asked: int, train: list | None, test_fps, dataset: str,
          train_counts: set[int]) -> dict[str, Any]:
    """Every metric of the module docstring for ``samples``."""
    from matloop.evaluators import generation_metrics as gm
    from matloop.soundness import min_distance_ratio, reads_back

    padded = samples + [None] * (n_asked - len(samples))
    row: dict[str, Any] = {"n_asked": n_asked, "n_returned": len(samples)}
    row.update(gm.validity_rates(padded))
    ratios = np.array([min_distance_ratio(s) for s in samples]) if samples else np.zeros(0)
    row["sound_share"] = float((ratios >= 0.8).sum() / n_asked)
    row["cif_readable"] = float(sum(reads_back(s) for s in samples) / max(len(samples), 1))
    if dataset == "carbon_24" and samples:
        closest = np.array([ratio * 1.52 for ratio in ratios])  # C-C: ratio x (0.76 + 0.76)
        row["cc_1p2_share"] = float((closest >= 1.2).sum() / n_asked)
        row["median_closest_cc"] = float(np.median(closest))
    if samples:
        row["atom_count_seen_share"] = float(np.mean([len(s) in train_counts for s in samples]))
    if not samples:
        return row
    t = time.perf_counter()
    g_struc, g_comp = gm.fingerprints(samples)
    struc_cut, comp_cut = PRESETS.get(dataset, PRESETS["realistic"])["cov"]
    row.update(gm.coverage_from_fingerprints(g_struc, g_comp, *test_fps, struc_cut, comp_cut))
    unique = _distinct(samples)
    row["uniqueness"] = float(unique.mean())
    if train is not None:
        novel = _distinct(samples, train)
        row["novelty"] = float(novel.mean())
        row["unique_and_novel"] = float((unique & novel).mean())
    row["metric_seconds"] = time.perf_counter() - t
    return row


def run(args) -> None:
    """The ``--dataset`` / ``--train`` mode of ``generation.py``; with ``args.schema``, the
    JSON it would write, from synthetic crystals, on stdout (progress goes to stderr)."""
    import contextlib
    import sys

    if not getattr(args, "schema", False):
        _run(args)
        return
    args.checkpoint_dir, args.retrain, args.epochs, args.n = None, True, 1, min(args.n, 3)
    # soundness off: a one-epoch model's draws would be redrawn for long; the setting's key
    # stays in "settings", and its tally's reasons are data (see below)
    args.setting = [*(args.setting or []), "soundness=false"]
    with contextlib.redirect_stdout(sys.stderr):
        payload = _run(args)
    for row in payload["rows"].values():
        if row.get("soundness_tally"):
            row["soundness_tally"]["rejected"] = {"*": None}  # keys are rejection reasons
    print(json.dumps(payload, default=float))


def _run(args) -> dict[str, Any]:
    import os

    import torch
    from common import RESULTS, content_hash, shared_data, write_result

    from matloop.evaluators import generation_metrics as gm
    from matloop.generators.torch_common import read_structures_csv, training_progress
    from matloop.generators.training import generator_class

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    dataset = args.dataset or "custom"
    if getattr(args, "schema", False):
        train, test = schema_split(dataset)
    elif args.train is not None:
        train, _ = read_structures_csv(args.train)
        test, _ = read_structures_csv(args.test) if args.test else ([], None)
    else:
        train, test = load_split(dataset, shared_data(args.shared_data), args.seed)
    print(f"{dataset}: {len(train)} train, {len(test)} test crystals", flush=True)
    rng = np.random.default_rng(args.seed)
    if args.n_test and len(test) > args.n_test:
        test = [test[i] for i in np.sort(rng.choice(len(test), args.n_test, replace=False))]
    counts = {len(s) for s in train}
    cache = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    key = content_hash(dataset, args.seed, args.n_test, args.n, len(train), len(test),
                       args.train, args.test)
    t = time.perf_counter()
    test_fps = _cached(cache, f"{dataset}-test-fps-{key}.pkl", lambda: gm.fingerprints(test))
    print(f"fingerprints of {len(test)} test crystals: {time.perf_counter() - t:.0f} s",
          flush=True)
    rows: dict[str, Any] = {}
    ceiling = cache / f"{dataset}-ceiling-{key}.json" if cache else None
    if args.data_row and ceiling is not None and ceiling.exists():
        rows["real_data_ceiling"] = json.loads(ceiling.read_text())
        print("real_data_ceiling (cached)", _short(rows["real_data_ceiling"]), flush=True)
    elif args.data_row:
        t = time.perf_counter()
        # The ceiling: n real crystals (train crystals, never in the test set) scored against
        # the same test crystals as the models' samples; novelty does not apply.
        pick = rng.choice(len(train), size=min(args.n, len(train)), replace=False)
        sub = [train[i] for i in pick]
        row = score(sub, len(sub), None, test_fps, dataset, counts)
        row["what"] = (f"{len(sub)} real crystals of the train part scored as samples against "
                       f"the {len(test)} test crystals (the metrics' ceiling at this count)")
        row["seconds"] = time.perf_counter() - t
        rows["real_data_ceiling"] = row
        if ceiling is not None:
            ceiling.write_text(json.dumps(row, default=float))
        print("real_data_ceiling", _short(row), flush=True)
    for kind in args.models or []:
        settings = dict(seed=args.seed, device=args.device)
        if args.epochs is not None:
            settings["epochs"] = args.epochs
        for item in args.setting or []:
            key, _, value = item.partition("=")
            settings[key] = _number(value)
        gen = generator_class(kind)(**settings)
        ckpt = Path(args.checkpoint_dir) / f"{dataset}-{kind}.pt" if args.checkpoint_dir else None
        load0 = os.getloadavg()
        t = time.perf_counter()
        if ckpt is not None and ckpt.exists() and not args.retrain:
            gen = type(gen).load(ckpt, device=args.device)
            # how it samples may change on a trained model; what it learned may not
            gen.config.update({k: v for k, v in settings.items() if k in SAMPLING})
            train_s = json.loads(ckpt.with_suffix(".json").read_text())["train_seconds"]
        else:
            last = [0.0]

            def show(epoch, epochs, logs, last=last):
                if time.perf_counter() - last[0] > 30 or epoch == epochs:
                    last[0] = time.perf_counter()
                    print(f"  {kind} epoch {epoch}/{epochs} loss {logs.get('loss', 0):.4f}",
                          flush=True)

            with training_progress(show):
                gen.fit(train)
            train_s = time.perf_counter() - t
            if ckpt is not None:
                gen.save(ckpt)
                ckpt.with_suffix(".json").write_text(json.dumps({"train_seconds": train_s}))
        load1 = os.getloadavg()
        t = time.perf_counter()
        samples = gen.sample(args.n, rng=np.random.default_rng(args.seed))
        sample_s = time.perf_counter() - t
        load2 = os.getloadavg()
        row = score(samples, args.n, train, test_fps, dataset, counts)
        tally = getattr(gen, "soundness", None)
        row.update(
            train_seconds=train_s,
            sample_seconds=sample_s,
            device=str(getattr(gen, "device", "cpu")),
            load_avg_1min_train_start_end=[round(load0[0], 2), round(load1[0], 2)],
            load_avg_1min_sample_end=round(load2[0], 2),
            soundness_tally=None if tally is None else tally.to_dict(),
            settings={k: v for k, v in gen.config.items()
                      if not isinstance(v, (list, dict)) or k == "property_columns"},
        )
        rows[kind] = row
        print(kind, _short(row), flush=True)
    payload = {
        "dataset": dataset,
        "split": {"train": len(train), "test_scored": len(test), "seed": args.seed},
        "n_samples": args.n,
        "threads": args.threads,
        "note": args.note,
        "rows": rows,
    }
    if getattr(args, "schema", False):
        return payload
    out = Path(args.out) if args.out else RESULTS / f"generation_{dataset}.json"
    write_result(out, payload)
    print(f"wrote {out}")
    return payload


def _cached(folder: Path | None, name: str, compute):
    """``compute()``, kept in ``folder/name`` (a local pickle this script wrote) for reruns."""
    import pickle

    if folder is None:
        return compute()
    path = folder / name
    if path.exists():
        with path.open("rb") as fh:
            return pickle.load(fh)  # noqa: S301 - our own cache file
    value = compute()
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(value, fh)
    return value


def _short(row: dict) -> dict:
    keys = ("n_returned", "struct_valid", "sound_share", "cc_1p2_share", "cov_recall",
            "cov_precision", "uniqueness", "novelty", "train_seconds", "sample_seconds")
    return {k: round(row[k], 3) if isinstance(row.get(k), float) else row.get(k)
            for k in keys if k in row}


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)
