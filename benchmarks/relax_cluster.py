"""The batched fast path on Dask workers: crystals/s with 1 and 2 workers against the
in-process batched relaxer, on the same crystals, side by side in one run.

Relaxes a seeded sample of ``--n`` real crystals (Materials Project structures of at most
``--max-atoms`` sites from ``../shared/data/known_crystals_mp.csv.gz``, the sample
``benchmarks/relax_throughput.py`` takes) with CHGNet, FIRE + Fréchet cell filter, ``fmax``
0.05 eV/Å, at most 300 steps, one torch thread per process:

* ``in_process``: :class:`matloop.relax.batched.BatchedRelaxer` in this process (the model
  loaded before the clock starts);
* ``dask_1``, ``dask_2``: :class:`matloop.relax.cluster.DaskBatchedRelaxer` on a
  ``LocalCluster`` of 1 and 2 worker processes (one thread each), each worker pulling
  crystals from the round's queue into its batch of ``--batch-size`` (``--chunk-size``
  sends fixed chunks instead). Timed apart: the cluster's start-up, each worker's model
  load (``warm_up``), then the relaxation itself with warm workers.

Each path also records its CPU seconds (in the workers, for the Dask paths), so the work a
worker adds can be told apart from the load of a shared machine. Per worker task it records
its crystals, its takes from the queue, its time (``wall_s``) and the part outside the
batched relaxation (``wall_s - relax_s``). Overheads measured directly: a whole round of one
crystal that fails its pre-check (queue, task, events, answer; no relaxing), and one call
run on the scheduler, which is what a take from the queue is (the round trip a worker pays
when a slot opens). ``scaling_on_paper`` turns
a per-GPU rate (``--gpu-rate``, default 5.1 crystals/s, measured for the batched relaxer on
an H200) and those overheads into what ``--nodes`` x ``--gpus-per-node`` GPU workers would
reach on a round of ``--round-size`` crystals. Target on 2 cores: ``dask_2`` ≥ 1.7x
``dask_1``.

The load average is recorded before and after each path (the machine may be shared). Writes
``benchmarks/results/relax_cluster.json``. Example::

    nice -n 10 python benchmarks/relax_cluster.py --n 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402
from relax_throughput import run_benchmark  # noqa: E402

OUT = RESULTS / "relax_cluster.json"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_in_process(items, args) -> tuple[dict, dict]:
    from matloop.relax.batched import BatchedRelaxer, load_chgnet

    start = time.perf_counter()
    model = load_chgnet(args.device or "cpu")
    load_s = time.perf_counter() - start
    relaxer = BatchedRelaxer(fmax=args.fmax, steps=args.steps, batch_size=args.batch_size,
                             model=model)  # fmt: skip
    before = _load()
    start, cpu_start = time.perf_counter(), time.process_time()
    outcomes = relaxer.relax(items)
    seconds = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    report = {
        "cpu_s": cpu_s,
        "crystals_per_cpu_s": len(items) / cpu_s,
        "seconds": seconds,
        "crystals_per_s": len(items) / seconds,
        "model_load_s": load_s,
        "ok": sum(o.ok for o in outcomes),
        "load_before": before,
        "load_after": _load(),
    }
    return report, {o.candidate_id: o for o in outcomes}


def run_dask(items, args, n_workers: int) -> tuple[dict, dict]:
    from pymatgen.core import Lattice, Structure

    from matloop.relax.cluster import DaskBatchedRelaxer
    from matloop.relax.executors import dask_workers

    relaxer = DaskBatchedRelaxer(n_workers=n_workers, fmax=args.fmax, steps=args.steps,
                                 batch_size=args.batch_size, chunk_size=args.chunk_size,
                                 device=args.device)  # fmt: skip
    try:
        start = time.perf_counter()
        client = relaxer.client()
        client.wait_for_workers(n_workers)
        startup_s = time.perf_counter() - start
        model_load = relaxer.warm_up()
        before = _load()
        start, lead_cpu = time.perf_counter(), time.process_time()
        outcomes = relaxer.relax(items)
        seconds = time.perf_counter() - start
        lead_cpu_s = time.process_time() - lead_cpu
        after = _load()
        tasks = list(relaxer.chunks)
        # a whole round of one crystal that fails its pre-check: queue or chunk, task,
        # events, answer; no relaxing
        overlapping = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
        rounds, takes = [], []
        for _ in range(args.dispatch_trips):
            t0 = time.perf_counter()
            relaxer.relax([("empty", overlapping)])
            rounds.append(time.perf_counter() - t0)
        # one call run on the scheduler, as a pulling worker's take from the round's queue
        # is, each time a slot of its batch opens
        for _ in range(20):
            t0 = time.perf_counter()
            dask_workers(client)
            takes.append(time.perf_counter() - t0)
    finally:
        relaxer.close()
    cpu_s = sum(c["relax_cpu_s"] for c in tasks)
    report = {
        "workers": n_workers,
        "seconds": seconds,
        "crystals_per_s": len(items) / seconds,
        "ok": sum(o.ok for o in outcomes),
        "startup_s": startup_s,
        "model_load_s_per_worker": sorted(model_load.values()),
        "dispatch": f"chunks of {args.chunk_size}" if args.chunk_size else "pull",
        "tasks": len(tasks),
        "crystals_per_task": [c["n"] for c in tasks],
        "takes_per_task": [c.get("takes") for c in tasks],
        "cpu_s": cpu_s,
        "crystals_per_cpu_s": len(items) / max(1e-9, cpu_s),
        # this process: the client and (LocalCluster) the scheduler, on the same cores
        "lead_cpu_s": lead_cpu_s,
        "task_wall_s": [c["wall_s"] for c in tasks],
        "task_in_worker_overhead_s": [c["wall_s"] - c["relax_s"] for c in tasks],
        "one_crystal_round_s": rounds,
        "take_round_trip_s": takes,
        "workers_used": len({c["pid"] for c in tasks}),
        "resubmitted": relaxer.resubmitted,
        "duplicates": relaxer.duplicates,
        "load_before": before,
        "load_after": after,
    }
    return report, {o.candidate_id: o for o in outcomes}


def agreement(a: dict, b: dict) -> dict:
    """Energies (meV/atom) and structures of two paths' outcomes on the same crystals."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    both = [k for k in a if a[k].ok and b[k].ok]
    de = [abs(a[k].energy_per_atom - b[k].energy_per_atom) * 1000 for k in both]
    same = sum(matcher.fit(a[k].structure, b[k].structure) for k in both)
    return {"compared": len(both), "max_de_mev_per_atom": max(de, default=0.0),
            "same_structures": same,
            "same_ok": sum(a[k].ok == b[k].ok for k in a)}  # fmt: skip


def scaling_on_paper(gpu_rate: float, take_s: float, round_s: float, round_size: int,
                     nodes: int, gpus_per_node: int) -> dict:  # fmt: skip
    """What ``nodes * gpus_per_node`` pulling GPU workers reach on a round of
    ``round_size`` crystals: each GPU relaxes at ``gpu_rate`` and pays one queue round trip
    (``take_s``) per crystal at worst (one take per opened slot; in practice a take fills
    several); each round pays ``round_s`` once (queue, tasks, the last answers)."""
    gpus = nodes * gpus_per_node
    per_gpu = 1.0 / (1.0 / gpu_rate + take_s)
    round_wall_s = round_size / (gpus * per_gpu) + round_s
    return {"gpu_rate_crystals_per_s": gpu_rate, "take_round_trip_s": take_s,
            "round_overhead_s": round_s, "round_size": round_size, "gpus": gpus,
            "per_gpu_crystals_per_s": per_gpu, "round_wall_s": round_wall_s,
            "total_crystals_per_s": round_size / round_wall_s,
            "crystals_per_hour": 3600 * round_size / round_wall_s}  # fmt: skip


def measure(args: argparse.Namespace, items: list) -> dict:
    repeats = []  # every path once per repeat, side by side
    for repeat in range(args.repeats):
        local_report, local = run_in_process(items, args)
        print(f"[{repeat + 1}/{args.repeats}] in-process batched: "
              f"{local_report['crystals_per_s']:.3f} crystals/s", flush=True)  # fmt: skip
        paths = {"in_process": local_report}
        found = {}
        for k in (1, 2):
            paths[f"dask_{k}"], found[k] = run_dask(items, args, k)
            p = paths[f"dask_{k}"]
            print(f"[{repeat + 1}/{args.repeats}] dask, {k} worker(s): "
                  f"{p['crystals_per_s']:.3f} crystals/s (start-up {p['startup_s']:.1f} s, "
                  f"model load {p['model_load_s_per_worker']} s, {p['dispatch']}: crystals "
                  f"per task {p['crystals_per_task']}, task seconds {p['task_wall_s']})",
                  flush=True)  # fmt: skip
        repeats.append((paths, local, found))
    ratio = [p["dask_2"]["crystals_per_s"] / p["dask_1"]["crystals_per_s"] for p, _, _ in repeats]
    # the repeat with the median ratio stands for the run; every repeat's rates are kept
    paths, local, found = repeats[sorted(range(len(ratio)), key=ratio.__getitem__)[len(ratio) // 2]]
    local_report = paths["in_process"]
    one, two = paths["dask_1"], paths["dask_2"]
    take_s = statistics.median_high(two["take_round_trip_s"])
    round_s = statistics.median_high(two["one_crystal_round_s"] or [0.0])
    in_worker = one["task_in_worker_overhead_s"] or [0.0]
    report = {
        "n": len(items),
        "settings": {
            "fmax": args.fmax,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "device": args.device or "cpu",
            "threads_per_worker": 1,
            "dispatch": two["dispatch"],
        },
        "repeats": [{k: v["crystals_per_s"] for k, v in p.items()} for p, _, _ in repeats],
        "paths": paths,
        "ratios": {
            "dask_2_over_dask_1": two["crystals_per_s"] / one["crystals_per_s"],
            "dask_2_over_dask_1_per_repeat": ratio,
            "dask_1_over_in_process": one["crystals_per_s"] / local_report["crystals_per_s"],
            "dask_2_over_in_process": two["crystals_per_s"] / local_report["crystals_per_s"],
            "target_dask_2_over_dask_1": 1.7,
            # CPU seconds in the workers' relaxations against in this process: the work a
            # worker adds, whatever the load on a shared machine
            "dask_1_over_in_process_by_cpu_s": one["crystals_per_cpu_s"]
            / local_report["crystals_per_cpu_s"],
        },
        "overhead_s": {
            "one_crystal_round_median": round_s,
            "take_round_trip_median": take_s,
            "task_in_worker_mean": sum(in_worker) / len(in_worker),
            "dask_1_minus_in_process": one["seconds"] - local_report["seconds"],
        },
        "agreement": {"dask_1": agreement(local, found[1]), "dask_2": agreement(local, found[2])},
        "scaling_on_paper": scaling_on_paper(args.gpu_rate, take_s, round_s, args.round_size,
                                             args.nodes, args.gpus_per_node),  # fmt: skip
    }
    print(f"2 workers / 1 worker: {report['ratios']['dask_2_over_dask_1']:.2f}x, the median of "
          f"{', '.join(f'{r:.2f}' for r in ratio)} (target 1.7x); "
          f"a take from the queue {take_s * 1000:.1f} ms, a one-crystal round {round_s:.3f} s; "
          f"load {_load()}")  # fmt: skip
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="crystals table (default: known_crystals_mp.csv.gz in the shared data)",
    )
    p.add_argument("--shared-data", default=None, help="shared data folder")
    p.add_argument("--n", type=int, default=64, help="crystals to relax (default 64)")
    p.add_argument("--max-atoms", type=int, default=20)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-size", type=int, default=16, help="crystals per batch (default 16)"
    )
    p.add_argument("--repeats", type=int, default=3,
                   help="times every path runs, side by side (the median ratio is reported)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="send fixed chunks of this many crystals (default: workers pull "
                   "crystals from the round's queue as their batches have room)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument(
        "--dispatch-trips",
        type=int,
        default=5,
        help="one-crystal rounds (the crystal fails its pre-check) to time the round trip",
    )
    p.add_argument(
        "--gpu-rate",
        type=float,
        default=5.1,
        help="crystals/s of one GPU for scaling_on_paper (H200, batched: 5.1)",
    )
    p.add_argument("--round-size", type=int, default=4096,
                   help="crystals in a round (for scaling_on_paper)")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=4)
    p.add_argument("--output", type=Path, default=OUT)
    p.add_argument(
        "--schema",
        action="store_true",
        help="run the same code on two tiny made-up crystals, 3 steps, and print "
        "the JSON it would write (for tests/benchmarks/test_results_schema.py)",
    )
    args = p.parse_args()
    if args.schema:
        args.dispatch_trips, args.repeats = 1, 1
    run_benchmark(args, measure)

if __name__ == "__main__":
    main()
