"""GPU check of the batched relaxer (issue #15): bare CHGNet vs. batched, then at scale.

Run by ``benchmarks/gpu_check.sh`` (which installs the wheels first); on its own::

    python benchmarks/gpu_check.py                      # CUDA: 64 + 64 + 1,024 crystals
    python benchmarks/gpu_check.py --device cpu --small  # the same code path in seconds

Relaxes real MP crystals (``known_crystals_mp.csv.gz`` in the shared data, up to 20 sites,
the seeded sample of ``benchmarks/relax_throughput.py``) with CHGNet, FIRE + Fréchet cell
filter, fmax 0.05 eV/Å, at most 300 steps:

1. bare CHGNet (``StructOptimizer``, one crystal after another) on the first 64;
2. the batched relaxer on the same 64: crystals/s, ratio, and agreement with bare
   (energies within 5 meV/atom, ``StructureMatcher`` matches, where both converge);
3. the batched relaxer on 1,024 crystals (batch filled by the GPU's free memory), under
   cProfile: crystals/s, peak GPU memory, and the functions that took the most time.

Writes one JSON (default ``benchmarks/results/gpu_check.json``, ``gpu_check_small.json``
with ``--small``) with the command, commit, machine and versions (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, shared_data, write_result  # noqa: E402
from relax_throughput import _by_id, agreement, load_crystals  # noqa: E402


def run_bare(items, device: str, fmax: float, steps: int) -> tuple[float, dict]:
    """CHGNet's own ``StructOptimizer`` on ``device``, one crystal after another."""
    from chgnet.model import CHGNet, StructOptimizer

    results = {}
    start = time.perf_counter()
    model = CHGNet.load(verbose=False, use_device=device)
    relaxer = StructOptimizer(model=model, optimizer_class="FIRE", use_device=device)
    for mid, structure in items:
        try:
            out = relaxer.relax(structure, fmax=fmax, steps=steps, relax_cell=True,
                                verbose=False)  # fmt: skip
            final = out["final_structure"]
            n_steps = len(out["trajectory"].energies)
            results[mid] = {"ok": n_steps < steps,
                            "energy_per_atom": float(out["trajectory"].energies[-1]) / len(final),
                            "structure": final, "reason": None}  # fmt: skip
        except Exception as exc:  # keep going, as the batched path does
            results[mid] = {"ok": False, "energy_per_atom": None, "structure": None,
                            "reason": f"{type(exc).__name__}: {exc}"}  # fmt: skip
    _sync(device)
    return time.perf_counter() - start, results


def run_batched(items, device: str, fmax: float, steps: int, batch_size: int,
                profile: bool = False) -> tuple[float, dict, dict]:  # fmt: skip
    """The batched relaxer; with ``profile``, also a short cProfile summary."""
    from matloop.relax.batched import BatchedRelaxer

    relaxer = BatchedRelaxer(fmax=fmax, steps=steps, batch_size=batch_size, device=device)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    outs = relaxer.relax(items, num_threads=None if device.startswith("cuda") else 1)
    _sync(device)
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - start
    return wall, _by_id(outs), _profile_summary(profiler) if profiler else {}


def _profile_summary(profiler: cProfile.Profile, top: int = 15) -> dict:
    """The functions with the most own time, and the total profiled."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        short = "/".join(Path(filename).parts[-2:]) if filename != "~" else ""
        rows.append({"function": f"{short}:{line}({name})" if short else name,
                     "calls": calls, "own_s": round(own, 3), "cumulative_s": round(cumulative, 3)})
    rows.sort(key=lambda r: -r["own_s"])
    return {"total_s": round(stats.total_tt, 2), "top_by_own_time": rows[:top]}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--small", action="store_true",
                   help="2 + 2 + 4 crystals, 10 steps: the same code path in seconds")
    p.add_argument("--n-compare", type=int, default=64)
    p.add_argument("--n-large", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--max-atoms", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1024,
                   help="most crystals per batch; GPU memory usually limits first")
    p.add_argument("--shared-data", default=None, help="shared data folder")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    if args.small:
        args.n_compare, args.n_large, args.steps = 2, 4, min(args.steps, 10)
    output = args.output or RESULTS / ("gpu_check_small.json" if args.small else
                                       "gpu_check.json")  # fmt: skip

    import torch

    warnings.filterwarnings("ignore")
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if not on_gpu:
        torch.set_num_threads(1)
    csv = shared_data(args.shared_data) / "known_crystals_mp.csv.gz"
    started = time.perf_counter()
    large = load_crystals(csv, args.n_large, args.max_atoms, args.seed)
    compare = load_crystals(csv, args.n_compare, args.max_atoms, args.seed)

    from matloop.relax.batched import _load_chgnet

    t = time.perf_counter()
    _load_chgnet(args.device)  # model load and CUDA start-up, outside the timings
    load_s = time.perf_counter() - t

    print(f"bare CHGNet, {len(compare)} crystals on {args.device} ...", flush=True)
    bare_s, bare = run_bare(compare, args.device, args.fmax, args.steps)
    print(f"  {bare_s:.1f} s", flush=True)
    print(f"batched, the same {len(compare)} ...", flush=True)
    small_s, small, _ = run_batched(compare, args.device, args.fmax, args.steps, args.batch_size)
    print(f"  {small_s:.1f} s", flush=True)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    print(f"batched, {len(large)} crystals, profiled ...", flush=True)
    large_s, large_out, profile = run_batched(large, args.device, args.fmax, args.steps,
                                              args.batch_size, profile=True)  # fmt: skip
    print(f"  {large_s:.1f} s", flush=True)
    peak = torch.cuda.max_memory_allocated() if on_gpu else None

    def path(n: int, wall: float, res: dict) -> dict:
        return {"crystals": n, "wall_s": round(wall, 2), "crystals_per_s": round(n / wall, 3),
                "converged": sum(r["ok"] for r in res.values()),
                "failed": [f"{m}: {r['reason']}" for m, r in res.items() if r["reason"]]}  # fmt: skip

    report = {
        "benchmark": "gpu_check",
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if on_gpu else None,
        "cuda": torch.version.cuda,
        "settings": {"fmax": args.fmax, "steps": args.steps, "max_atoms": args.max_atoms,
                     "seed": args.seed, "batch_size": args.batch_size, "small": args.small},
        "model_load_s": round(load_s, 2),
        "paths": {
            "bare": path(len(compare), bare_s, bare),
            "batched_compare": path(len(compare), small_s, small),
            "batched_large": path(len(large), large_s, large_out),
        },
        "batched_vs_bare": round(bare_s / small_s, 3),
        "large_vs_bare_crystals_per_s": round((len(large) / large_s) / (len(compare) / bare_s), 3),
        "agreement_bare_vs_batched": agreement(bare, small),
        "peak_gpu_memory_gib": round(peak / 2**30, 3) if peak is not None else None,
        "profile_large": profile,
        "total_s": round(time.perf_counter() - started, 1),
        "targets": "GPU: >= 100 crystals/s on 1,024 crystals and >= 100x bare; CPU: batched "
                   ">= 3x bare; agreement: within 5 meV/atom where both converge",
    }
    out = write_result(output, report, gpu=report["gpu"])
    print(f"bare {report['paths']['bare']['crystals_per_s']} crystals/s, batched "
          f"{report['paths']['batched_compare']['crystals_per_s']} ({report['batched_vs_bare']}x), "
          f"{len(large)} batched {report['paths']['batched_large']['crystals_per_s']} crystals/s; "
          f"agreement {report['agreement_bare_vs_batched']}; peak GPU memory "
          f"{report['peak_gpu_memory_gib']} GiB; wrote {out}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("DO_NOT_TRACK", "1")
    main()
