"""Relaxation throughput: matloop's relax stage (per structure and batched) vs. atomate2
job-per-crystal vs. bare CHGNet.

Relaxes the same real crystals (Materials Project structures from
``../shared/data/known_crystals_mp.csv.gz``, up to ``--max-atoms`` sites, a seeded sample of
``--n``) up to five ways in one process, all with CHGNet, FIRE + Fréchet cell filter,
``fmax`` 0.05 eV/Å, at most 300 steps and ``--threads`` torch threads (one by default):

* ``matloop``: :func:`matloop.relax.runner.relax_structures` with
  :func:`matloop.relax.makers.make_relax_maker` — what the loop's relax step runs (jobflow
  jobs, atomate2 task documents in a JobStore, sanity checks, the model loaded once);
* ``atomate2``: atomate2's ``ForceFieldRelaxMaker``, one job per crystal through jobflow's
  ``run_locally`` (each job builds its own calculator, as atomate2 does);
* ``bare``: a loop over ``chgnet.model.StructOptimizer.relax`` with one loaded model;
* ``batched``: :class:`matloop.relax.batched.BatchedRelaxer` (``relaxer.batched: true``),
  ``--batch-size`` crystals relaxed together in one torch state, CHGNet's graphs built with
  tensors and reused with a Verlet skin, on CUDA when present (or ``--device``). Its
  agreement with the ``atomate2`` path is the check that it relaxes to the same structures
  and energies (issue: within 5 meV/atom, same ``StructureMatcher`` match);
* ``torchsim``: a peer, TorchSim (torch-sim-atomistic 0.3.0, Python >= 3.11,
  ``pip install '.[bench]'``): its batched FIRE (ASE flavour) with its Fréchet cell filter
  and its in-flight autobatcher (about ``--batch-size`` crystals at once, on ``--device``),
  its force convergence test at ``fmax`` after every step, at most ``--steps`` steps per
  crystal. torch-sim ships no CHGNet model (0.3.0 has MACE, SevenNet, ORB, MatterSim,
  FairChem, GraphPES and metatomic), so it drives CHGNet through matloop's adapter
  (``benchmarks/torchsim_chgnet.py``: graphs built with tensors, rebuilt every call as
  TorchSim's models are stateless). Without torch-sim the JSON records exactly why the path
  could not run.

Prints a table and writes ``benchmarks/results/relax_throughput.json`` whole (crystals/s
and seconds of each path, the ratios, how well the paths agree on energies and structures,
the load before and after each path, and with ``benchmarks/common.py`` the command, commit,
machine and versions). Goals on CPU: matloop ≥ bare, batched ≥ 3x bare. Example::

    nice -n 10 python benchmarks/relax_throughput.py --n 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, shared_data, stdout_to_stderr, write_result  # noqa: E402

OUT = RESULTS / "relax_throughput.json"


def _by_id(outcomes) -> dict[str, dict]:
    """What the comparison needs of each RelaxOutcome, by candidate id."""
    return {
        o.candidate_id: {
            "ok": o.ok,
            "energy_per_atom": o.energy_per_atom,
            "structure": o.structure,
            "reason": o.reason,
        }
        for o in outcomes
    }

def load_crystals(path: Path, n: int, max_atoms: int, seed: int):
    """A seeded sample of ``n`` crystals of at most ``max_atoms`` sites: [(id, Structure)]."""
    import pandas as pd
    from pymatgen.core import Structure

    frame = pd.read_csv(path, usecols=["material_id", "nsites", "cif"])
    frame = frame[frame["nsites"] <= max_atoms].sort_values("material_id")
    rows = frame.sample(n=min(n, len(frame)), random_state=seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mid, cif in zip(rows["material_id"], rows["cif"], strict=True):
            out.append((str(mid), Structure.from_str(cif, fmt="cif")))
    return out


def run_matloop(items, fmax: float, steps: int) -> tuple[float, dict]:
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    from matloop.relax.makers import clear_calculator_cache, make_relax_maker
    from matloop.relax.runner import relax_structures

    clear_calculator_cache()  # the model load counts, as for the other paths
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    start = time.perf_counter()
    maker = make_relax_maker("CHGNet", fmax=fmax, steps=steps)
    outs = relax_structures(items, maker, store, num_threads=_threads())
    wall = time.perf_counter() - start
    return wall, _by_id(outs)


def _threads() -> int:
    """The torch threads every path runs with (``--threads``, set by run_benchmark)."""
    import torch

    return torch.get_num_threads()


def run_atomate2(items, fmax: float, steps: int) -> tuple[float, dict]:
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    results = {}
    start = time.perf_counter()
    for mid, structure in items:
        maker = ForceFieldRelaxMaker(
            force_field_name="CHGNet", steps=steps, relax_kwargs={"fmax": fmax}
        )
        job = maker.make(structure)
        try:
            responses = run_locally(job, store=store, log=False, create_folders=False)
            doc = responses[job.uuid][1].output
            energy = doc.output.energy_per_atom
            results[mid] = {
                "ok": str(getattr(doc.state, "value", doc.state)) == "successful",
                "energy_per_atom": energy,
                "structure": doc.output.structure,
                "reason": None,
            }
        except Exception as exc:  # keep going, as the other paths do
            results[mid] = {"ok": False, "energy_per_atom": None, "structure": None,
                            "reason": f"{type(exc).__name__}: {exc}"}
    return time.perf_counter() - start, results


def run_bare(items, fmax: float, steps: int) -> tuple[float, dict]:
    from chgnet.model import CHGNet, StructOptimizer

    results = {}
    start = time.perf_counter()
    relaxer = StructOptimizer(model=CHGNet.load(verbose=False), optimizer_class="FIRE")
    for mid, structure in items:
        try:
            out = relaxer.relax(structure, fmax=fmax, steps=steps, relax_cell=True,
                                verbose=False)
            final = out["final_structure"]
            n_steps = len(out["trajectory"].energies)
            energy = float(out["trajectory"].energies[-1]) / len(final)
            results[mid] = {"ok": n_steps < steps, "energy_per_atom": energy,
                            "structure": final, "reason": None}
        except Exception as exc:
            results[mid] = {"ok": False, "energy_per_atom": None, "structure": None,
                            "reason": f"{type(exc).__name__}: {exc}"}
    return time.perf_counter() - start, results


def run_batched(items, fmax: float, steps: int, batch_size: int = 32,
                device: str | None = None) -> tuple[float, dict]:
    from matloop.relax.batched import BatchedRelaxer, clear_model_cache

    clear_model_cache()  # the model load counts, as for the other paths
    start = time.perf_counter()
    relaxer = BatchedRelaxer(fmax=fmax, steps=steps, batch_size=batch_size, device=device)
    outs = relaxer.relax(items, num_threads=_threads())
    wall = time.perf_counter() - start
    return wall, _by_id(outs)


class PathUnavailable(RuntimeError):
    """A path that cannot run here; its message says exactly why."""


#: The torch-sim-atomistic release the ``torchsim`` path is written against (its API).
TORCHSIM_VERSION = "0.3.0"
TORCHSIM_PEER = (
    f"TorchSim {TORCHSIM_VERSION}'s optimizer and autobatcher driving CHGNet through matloop's "
    "adapter, since torch-sim ships no CHGNet model: ts.optimize with ts.frechet_cell_fire "
    "(ASE flavour), ts.InFlightAutoBatcher holding about batch_size crystals (by atoms), "
    "ts.generate_force_convergence_fn(fmax) tested after every step, at most `steps` steps per "
    "crystal; benchmarks/torchsim_chgnet.py builds CHGNet's graphs with tensors afresh at each "
    "call (matloop.relax.graphs) and runs matloop.relax.batched._evaluate"
)


def torchsim_unavailable_reason() -> str | None:
    """Why the ``torchsim`` path cannot run here, or None when it can."""
    import importlib.util
    from importlib import metadata

    if importlib.util.find_spec("torch_sim") is None:
        return (f"torch-sim-atomistic is not installed: this path needs torch-sim-atomistic "
                f"{TORCHSIM_VERSION} (Python >= 3.11; pip install '.[bench]'), whose optimizer "
                "and autobatcher drive CHGNet through benchmarks/torchsim_chgnet.py, since "
                "torch-sim ships no CHGNet model")
    try:
        version = metadata.version("torch-sim-atomistic")
    except metadata.PackageNotFoundError:
        version = "of unknown version"
    if version != TORCHSIM_VERSION:
        return (f"torch-sim-atomistic {version} is installed: this path is written against "
                f"{TORCHSIM_VERSION}'s API (ts.frechet_cell_fire, ts.InFlightAutoBatcher)")
    try:
        import torch_sim  # noqa: F401
    except Exception as exc:  # e.g. vesin-torch built against another torch
        return f"torch_sim cannot be imported: {type(exc).__name__}: {exc}"
    return None


def run_torchsim(items, fmax: float, steps: int, device: str | None = None,
                 batch_size: int = 32) -> tuple[float, dict]:  # fmt: skip
    """TorchSim's batched FIRE + Fréchet cell filter and in-flight autobatcher on CHGNet
    through matloop's adapter (see ``TORCHSIM_PEER``)."""
    reason = torchsim_unavailable_reason()
    if reason is not None:
        raise PathUnavailable(reason)
    import torch
    import torch_sim as ts
    from pymatgen.core import Structure
    from torchsim_chgnet import CHGNetModel

    from matloop.relax.batched import clear_model_cache

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    structures = [s for _, s in items]
    # TorchSim sizes batches from measured memory only on a GPU; cap them by atoms at about
    # batch_size crystals, as the batched path's (no crystal may exceed the cap)
    sizes = [len(s) for s in structures]
    cap = max(batch_size * sum(sizes) / len(sizes), max(sizes))
    converged = ts.generate_force_convergence_fn(force_tol=fmax)
    clear_model_cache()  # the model load counts, as for the other paths
    start = time.perf_counter()
    model = CHGNetModel(device=device)
    batcher = ts.InFlightAutoBatcher(model, memory_scales_with="n_atoms", max_memory_scaler=cap)
    try:
        # steps_between_swaps=1: convergence tested after every step, as the other paths
        # do, and each crystal gets at most `steps` steps (optimize's max_steps // it)
        final = ts.optimize(
            system=structures, model=model, optimizer=ts.frechet_cell_fire,
            convergence_fn=converged, autobatcher=batcher, max_steps=steps,
            steps_between_swaps=1,
        )  # fmt: skip
    except Exception as exc:  # one broken crystal stops TorchSim's whole run
        failed = {"ok": False, "energy_per_atom": None, "structure": None,
                  "reason": f"{type(exc).__name__}: {exc}"}  # fmt: skip
        return time.perf_counter() - start, {mid: dict(failed) for mid, _ in items}
    ok = converged(final).tolist()
    energies = (final.energy / final.n_atoms_per_system).tolist()
    results = {}
    for (mid, initial), done, energy, out in zip(items, ok, energies, final.to_structures(),
                                                 strict=True):  # fmt: skip
        # torch_sim rebuilds plain elements; keep the input's species (StructureMatcher tells
        # an oxidation-decorated species from its element)
        structure = Structure(out.lattice, initial.species, out.cart_coords,
                              coords_are_cartesian=True)  # fmt: skip
        results[mid] = {"ok": bool(done), "energy_per_atom": energy, "structure": structure,
                        "reason": None}  # fmt: skip
    return time.perf_counter() - start, results


def agreement(a: dict, b: dict) -> dict:
    """Energy differences (meV/atom) and StructureMatcher agreement over crystals both
    paths relaxed."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    diffs, matches, both = [], 0, 0
    for mid, ra in a.items():
        rb = b.get(mid)
        if rb is None or ra["energy_per_atom"] is None or rb["energy_per_atom"] is None:
            continue
        both += 1
        diffs.append(abs(ra["energy_per_atom"] - rb["energy_per_atom"]) * 1000)
        if ra["structure"] is not None and rb["structure"] is not None:
            matches += bool(matcher.fit(ra["structure"], rb["structure"]))
    diffs.sort()
    return {
        "compared": both,
        "max_abs_dE_meV_atom": round(max(diffs), 3) if diffs else None,
        "mean_abs_dE_meV_atom": round(sum(diffs) / len(diffs), 3) if diffs else None,
        "median_abs_dE_meV_atom": round(diffs[len(diffs) // 2], 3) if diffs else None,
        "within_5_meV_atom": sum(d <= 5 for d in diffs),
        "structure_matches": matches,
        "matched_fraction": round(matches / both, 4) if both else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--csv", type=Path, default=None,
                   help="crystals table (default: known_crystals_mp.csv.gz in the shared data)")
    p.add_argument("--shared-data", default=None, help="shared data folder")
    p.add_argument("--n", type=int, default=64, help="crystals to relax (default 64)")
    p.add_argument("--max-atoms", type=int, default=20)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paths", nargs="+",
                   default=["matloop", "atomate2", "bare", "batched", "torchsim"],
                   choices=["matloop", "atomate2", "bare", "batched", "torchsim"])
    p.add_argument("--batch-size", type=int, default=32, help="crystals per batch (batched)")
    p.add_argument("--device", default=None, help="batched path's torch device (default: "
                   "cuda when present, else cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of every path (default 1; 2 uses both cores of a "
                   "2-core machine)")
    p.add_argument("--output", type=Path, default=OUT)
    p.add_argument("--schema", action="store_true",
                   help="run the same code on two tiny made-up crystals, 3 steps, and print "
                        "the JSON it would write (for tests/benchmarks/test_results_schema.py)")
    args = p.parse_args()
    run_benchmark(args, measure)


def run_benchmark(args: argparse.Namespace, measure) -> None:
    """What the relaxation benchmarks do once their options are parsed: ``--threads`` torch
    threads (default one), then ``measure(args, crystals)`` on the seeded sample, written to
    ``args.output``; or with ``--schema``, on two tiny made-up crystals for 3 steps, the JSON
    printed (stdout, this process's and its children's, goes to stderr meanwhile)."""
    import torch

    threads = getattr(args, "threads", 1)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    warnings.filterwarnings("ignore")
    if args.schema:
        items, args.steps = schema_crystals(), 3
        with stdout_to_stderr():  # stdout is the JSON
            report = measure(args, items)
        json.dump(report, sys.stdout, indent=1, default=float)
        print()
        return
    csv = args.csv or shared_data(args.shared_data) / "known_crystals_mp.csv.gz"
    items = load_crystals(csv, args.n, args.max_atoms, args.seed)
    out = write_result(args.output, measure(args, items))
    print(f"wrote {out}")

def schema_crystals():
    """Two small made-up crystals for ``--schema``: rock salt and silicon."""
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.5), ["Si"],
                                   [[0, 0, 0]]).get_primitive_structure()  # fmt: skip
    return [("nacl", nacl.get_primitive_structure()), ("si", si)]


def measure(args: argparse.Namespace, items: list) -> dict:
    """Relax ``items`` along each of ``args.paths``, print the table, return the report."""
    import torch

    runners = {
        "matloop": run_matloop,
        "atomate2": run_atomate2,
        "bare": run_bare,
        "batched": partial(run_batched, batch_size=args.batch_size, device=args.device),
        "torchsim": partial(run_torchsim, batch_size=args.batch_size, device=args.device),
    }
    timings, cpu, results, loads, unavailable = {}, {}, {}, {}, {}
    for name in args.paths:
        print(f"relaxing {len(items)} crystals: {name} ...", flush=True)
        before = os.getloadavg()
        cpu_start = time.process_time()
        try:
            wall, res = runners[name](items, args.fmax, args.steps)
        except PathUnavailable as exc:
            unavailable[name] = str(exc)
            print(f"  cannot run: {exc}", flush=True)
            continue
        timings[name] = wall
        cpu[name] = time.process_time() - cpu_start  # this process's CPU: less load-bound
        results[name] = res
        loads[name] = [round(before[0], 2), round(os.getloadavg()[0], 2)]
        print(f"  {wall:.1f} s (load {loads[name][0]} -> {loads[name][1]})", flush=True)

    paths = {}
    for name in results:
        res = results[name]
        paths[name] = {
            "wall_s": round(timings[name], 2),
            "cpu_s": round(cpu[name], 2),
            "crystals_per_s": round(len(items) / timings[name], 4),
            "converged": sum(r["ok"] for r in res.values()),
            "failed": [f"{mid}: {r['reason']}" for mid, r in res.items() if r["reason"]],
            "load_avg_1min_before_after": loads[name],
        }
    if "torchsim" in paths:
        paths["torchsim"]["peer"] = TORCHSIM_PEER
    for name, reason in unavailable.items():
        paths[name] = {"ran": False, "reason": reason}
    ratios = {}
    for fast, others in (("matloop", ("bare", "atomate2")),
                         ("batched", ("bare", "atomate2", "matloop")),
                         ("torchsim", ("bare", "batched"))):  # fmt: skip
        for other in others:
            if fast in timings and other in timings:
                ratios[f"{fast}_vs_{other}"] = round(
                    paths[fast]["crystals_per_s"] / paths[other]["crystals_per_s"], 3
                )
                ratios[f"{fast}_vs_{other}_by_cpu_s"] = round(cpu[other] / cpu[fast], 3)
    agree = {}
    names = list(results)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            agree[f"{first}_vs_{second}"] = agreement(results[first], results[second])

    report = {
        "benchmark": "relax_throughput",
        "n_crystals": len(items),
        "n_requested": args.n,
        "max_atoms": args.max_atoms,
        "sites_total": sum(len(s) for _, s in items),
        "fmax": args.fmax,
        "steps": args.steps,
        "potential": "CHGNet",
        "torch_threads": _threads(),
        "paths": paths,
        "ratios": ratios,
        "goal": "on CPU: matloop_vs_bare >= 1.0, batched_vs_bare >= 3.0; batched agrees with "
                "atomate2 within 5 meV/atom, all structures matched",
        "batched": {"batch_size": args.batch_size,
                    "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu")},
        "agreement": agree,
        "material_ids": [mid for mid, _ in items],
    }

    print(f"\n{len(items)} crystals (≤ {args.max_atoms} atoms, {report['sites_total']} sites)")
    print(f"{'path':<10} {'wall s':>8} {'cpu s':>8} {'crystals/s':>11} {'converged':>10}  "
          "load 1-min")
    for name, row in paths.items():
        if "wall_s" not in row:
            print(f"{name:<10} did not run: {row['reason']}")
            continue
        print(f"{name:<10} {row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} "
              f"{row['crystals_per_s']:>11.3f} "
              f"{row['converged']:>10}  {row['load_avg_1min_before_after']}")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    for key, value in agree.items():
        print(f"{key}: {value}")
    if (batched := agree.get("atomate2_vs_batched")) is not None:
        print(f"batched vs atomate2: max |dE| {batched['max_abs_dE_meV_atom']} meV/atom, "
              f"mean {batched['mean_abs_dE_meV_atom']} meV/atom, structures matched "
              f"{batched['structure_matches']}/{batched['compared']}")
    return report


if __name__ == "__main__":
    main()
