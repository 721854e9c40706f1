"""The batched fast path on Dask workers: crystals/s with 1 and 2 workers against the
in-process batched relaxer, on the same crystals, side by side in one run.

Relaxes a seeded sample of ``--n`` real crystals (Materials Project structures of at most
``--max-atoms`` sites from ``../shared/data/known_crystals_mp.csv.gz``, the sample
``benchmarks/relax_throughput.py`` takes) with CHGNet, FIRE + Fréchet cell filter, ``fmax``
0.05 eV/Å, at most 300 steps, one torch thread per process:

* ``in_process``: :class:`matloop.relax.batched.BatchedRelaxer` in this process (the model
  loaded before the clock starts);
* ``dask_1``, ``dask_2``: :class:`matloop.relax.cluster.DaskBatchedRelaxer` on a
  ``LocalCluster`` of 1 and 2 worker processes (one thread each), chunks of at most
  ``--batch-size`` crystals that shrink toward the end (``--chunk-size`` fixes them). Timed apart: the cluster's start-up, each worker's model load
  (``warm_up``), then the relaxation itself with warm workers.

Each path also records its CPU seconds (in the workers, for the Dask paths), so the work a
chunk adds can be told apart from the load of a shared machine. Per chunk it records the time
in the worker (``wall_s``) and its part outside the batched
relaxation (``wall_s - relax_s``); the dispatch round trip of an empty chunk (one crystal that
fails its pre-check: scheduling, serialisation, events, no relaxing); ``direct``, their
sum; and the side-by-side overhead per chunk, ``(dask_1 seconds - in_process seconds) /
chunks`` (meaningful only on a quiet machine). ``scaling_on_paper`` turns a per-GPU rate
(``--gpu-rate``, default 5.1 crystals/s, measured for the batched relaxer on an H200) and
the direct overhead per chunk into what ``--nodes`` x ``--gpus-per-node`` GPU workers would
reach. Target on 2 cores: ``dask_2`` ≥ 1.7x ``dask_1``.

The load average is recorded before and after each path (the machine may be shared). Writes
``benchmarks/results/relax_cluster.json``. Example::

    nice -n 10 python benchmarks/relax_cluster.py --n 64
"""

from __future__ import annotations

import argparse
import os
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

    from matloop.relax.cluster import DaskBatchedRelaxer, relax_chunk

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
        start = time.perf_counter()
        outcomes = relaxer.relax(items)
        seconds = time.perf_counter() - start
        after = _load()
        chunks = list(relaxer.chunks)
        # dispatch round trip of a chunk with nothing to relax (fails its pre-check)
        overlapping = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
        trips = []
        for _ in range(args.dispatch_trips):
            t0 = time.perf_counter()
            client.submit(relax_chunk, [("empty", overlapping)], relaxer.chunk_settings(), None,
                          {"num_threads": 1}, pure=False).result()  # fmt: skip
            trips.append(time.perf_counter() - t0)
    finally:
        relaxer.close()
    in_worker = [c["wall_s"] - c["relax_s"] for c in chunks]
    report = {
        "workers": n_workers,
        "seconds": seconds,
        "crystals_per_s": len(items) / seconds,
        "ok": sum(o.ok for o in outcomes),
        "startup_s": startup_s,
        "model_load_s_per_worker": sorted(model_load.values()),
        "chunks": len(chunks),
        "chunk_size": args.chunk_size or "guided",
        "chunk_sizes": [c["n"] for c in chunks],
        "cpu_s": sum(c["relax_cpu_s"] for c in chunks),
        "crystals_per_cpu_s": len(items) / max(1e-9, sum(c["relax_cpu_s"] for c in chunks)),
        "chunk_wall_s": [c["wall_s"] for c in chunks],
        "chunk_in_worker_overhead_s": in_worker,
        "dispatch_round_trip_s": trips,
        "workers_used": len({c["pid"] for c in chunks}),
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


def scaling_on_paper(gpu_rate: float, chunk_size: int, overhead_s: float, nodes: int,
                     gpus_per_node: int) -> dict:  # fmt: skip
    """What ``nodes * gpus_per_node`` GPU workers reach: each GPU relaxes a chunk at
    ``gpu_rate`` and pays ``overhead_s`` per chunk; the campaign process only dispatches."""
    per_chunk_s = chunk_size / gpu_rate + overhead_s
    per_gpu = chunk_size / per_chunk_s
    gpus = nodes * gpus_per_node
    return {"gpu_rate_crystals_per_s": gpu_rate, "chunk_size": chunk_size,
            "overhead_per_chunk_s": overhead_s, "gpus": gpus,
            "per_gpu_crystals_per_s": per_gpu, "total_crystals_per_s": gpus * per_gpu,
            "crystals_per_hour": 3600 * gpus * per_gpu}  # fmt: skip


def measure(args: argparse.Namespace, items: list) -> dict:
    local_report, local = run_in_process(items, args)
    print(f"in-process batched: {local_report['crystals_per_s']:.3f} crystals/s", flush=True)
    paths = {"in_process": local_report}
    found = {}
    for k in (1, 2):
        paths[f"dask_{k}"], found[k] = run_dask(items, args, k)
        p = paths[f"dask_{k}"]
        print(f"dask, {k} worker(s): {p['crystals_per_s']:.3f} crystals/s "
              f"(start-up {p['startup_s']:.1f} s, model load {p['model_load_s_per_worker']} s, "
              f"{p['chunks']} chunks)", flush=True)  # fmt: skip
    one, two = paths["dask_1"], paths["dask_2"]
    overhead = max(0.0, (one["seconds"] - local_report["seconds"]) / max(1, one["chunks"]))
    trips = two["dispatch_round_trip_s"] or [0.0]
    in_worker = one["chunk_in_worker_overhead_s"] or [0.0]
    # measured directly: the round trip of an empty chunk plus the time a chunk spends in
    # its worker outside the relaxation (the side-by-side difference moves with the load)
    direct = sorted(trips)[len(trips) // 2] + sum(in_worker) / len(in_worker)
    report = {
        "n": len(items),
        "settings": {
            "fmax": args.fmax,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "device": args.device or "cpu",
            "threads_per_worker": 1,
        },
        "paths": paths,
        "ratios": {
            "dask_2_over_dask_1": two["crystals_per_s"] / one["crystals_per_s"],
            "dask_1_over_in_process": one["crystals_per_s"] / local_report["crystals_per_s"],
            "dask_2_over_in_process": two["crystals_per_s"] / local_report["crystals_per_s"],
            "target_dask_2_over_dask_1": 1.7,
            # CPU seconds in the workers' relaxations against in this process: the work a
            # chunk adds, whatever the load on a shared machine
            "dask_1_over_in_process_by_cpu_s": one["crystals_per_cpu_s"]
            / local_report["crystals_per_cpu_s"],
        },
        "overhead_per_chunk_s": {
            "total_vs_in_process": overhead,
            "dispatch_round_trip_median": sorted(trips)[len(trips) // 2],
            "in_worker_mean": sum(in_worker) / len(in_worker),
            "direct": direct,
        },
        "agreement": {"dask_1": agreement(local, found[1]), "dask_2": agreement(local, found[2])},
        "scaling_on_paper": scaling_on_paper(
            args.gpu_rate, args.gpu_chunk, direct, args.nodes, args.gpus_per_node
        ),  # fmt: skip
    }
    print(f"2 workers / 1 worker: {report['ratios']['dask_2_over_dask_1']:.2f}x (target 1.7x); "
          f"overhead per chunk {direct:.3f} s measured directly, {overhead:.2f} s side by side; "
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
    p.add_argument("--chunk-size", type=int, default=None,
                   help="crystals per chunk (default: guided chunks of at most --batch-size, "
                   "shrinking toward the end of the round)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument(
        "--dispatch-trips",
        type=int,
        default=5,
        help="empty chunks sent to time the dispatch round trip",
    )
    p.add_argument(
        "--gpu-rate",
        type=float,
        default=5.1,
        help="crystals/s of one GPU for scaling_on_paper (H200, batched: 5.1)",
    )
    p.add_argument("--gpu-chunk", type=int, default=64, help="chunk size on a GPU (on paper)")
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
        args.dispatch_trips = 1
    run_benchmark(args, measure)

if __name__ == "__main__":
    main()
