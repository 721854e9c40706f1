"""Fault-injection benchmark: seeded trials of a small Na–Cl campaign (2 rounds, real CHGNet,
a generator of broken crystals mixed into every round) killed with SIGKILL at random
moments, with store hiccups (a write that fails once and is retried), then resumed.

Each trial compares the resumed campaign with one uninterrupted run of the same seed and
counts: recovered (the resumed run finished and holds exactly the same rounds, candidates,
statuses, reasons, relaxations and evaluations), records lost (present after a kill, gone
later), duplicate relaxations (a candidate with more than one relaxation job). Kills are of
two kinds: before the K-th store write of the process (K uniform over the run's writes;
half the time the write is torn: half its documents written, then death) and from outside
after a random number of seconds.

    python benchmarks/faults.py --trials 6 --seed 0   # writes benchmarks/results/faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "flows" / "crash_driver.py"
sys.path.insert(0, str(DRIVER.parent))
from crash_driver import differences, lost, reference_reruns  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_config(folder: Path, seed: int) -> Path:
    data = {
        "name": "faults-na-cl",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": [
            {"name": "prototype_substitution", "weight": 0.4},
            {"name": "random_symmetric", "weight": 0.4},
            {"name": "bad_mix", "weight": 0.2},
        ],
        "budget": {"rounds": 2, "max_rounds": 2, "candidates_per_round": 6,
                   "relaxations_per_round": 2},
        "relaxer": {"steps": 150},
        "store": f"sqlite://{folder}/store.db",
        "output": str(folder / "out"),
        "seed": seed,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(data))
    return path


def run_driver(config: Path, *args: str, kill_after_s: float | None = None):
    """(return code, stdout, wall seconds); SIGKILL from outside after ``kill_after_s``."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(config), "--bad", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    try:
        out, err = proc.communicate(timeout=kill_after_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        print(err[-3000:], file=sys.stderr)
    return proc.returncode, out, time.monotonic() - start


def summary(out: str) -> dict:
    return json.loads(out.rsplit("done ", 1)[1])


def snapshot(config: Path) -> dict:
    code, out, _ = run_driver(config, "--summary-only")
    assert code == 0
    return summary(out)


def trial(index: int, seed: int, baseline: dict, n_writes: int, wall_s: float,
          workdir: Path) -> dict:
    rng = np.random.default_rng([seed, index])
    folder = workdir / f"trial-{index}"
    folder.mkdir()
    config = write_config(folder, 3)
    faults: list[dict] = []
    lost_records, previous = 0, None
    for _ in range(int(rng.integers(1, 3))):  # one or two kills
        hiccups = sorted({int(k) for k in rng.integers(1, n_writes, size=int(rng.integers(0, 3)))})
        args = ["--hiccups", ",".join(map(str, hiccups))] if hiccups else []
        if rng.random() < 0.7:
            k = int(rng.integers(1, n_writes + 1))
            torn = bool(rng.random() < 0.5)
            code, out, _ = run_driver(config, "--kill-at-write", str(k),
                                      *(["--torn"] if torn else []), *args)
            kind = {"kind": "kill-before-write", "write": k, "torn": torn}
        else:
            after = float(rng.uniform(3.0, wall_s))
            code, out, _ = run_driver(config, *args, kill_after_s=after)
            kind = {"kind": "kill-from-outside", "after_s": round(after, 1)}
        fired = sum(f"write {h} " in out for h in hiccups)
        kind.update(killed=code == -signal.SIGKILL, hiccups=fired,
                    last_write=next((line for line in reversed(out.splitlines())
                                     if line.startswith("write")), None))
        faults.append(kind)
        if code == 0:
            break  # the campaign finished before the planned kill
        now = snapshot(config)
        if previous is not None:
            lost_records += lost(previous, now)
        previous = now
    code, out, _ = run_driver(config)
    final = summary(out) if code == 0 else None
    if final is not None and previous is not None:
        lost_records += lost(previous, final)
    problems = differences(baseline, final) if final is not None else ["did not finish"]
    jobs = (final or previous or {"jobs": {}})["jobs"]
    duplicates = sum(n - 1 for cid, n in jobs.items() if n > 1 and ":" not in cid)
    bad = sum(1 for cid, r in (final or {}).get("reasons", {}).items()
              if "unanalysable" in r or "atoms >" in r or "interatomic" in r)
    return {
        "trial": index,
        "faults": faults,
        "kills": sum(f["killed"] for f in faults),
        "hiccups": sum(f["hiccups"] for f in faults),
        "bad_candidates": bad,
        "recovered": final is not None and not problems,
        "records_lost": lost_records,
        "duplicate_relaxations": duplicates,
        "reference_relaxations_redone": reference_reruns(final) if final else None,
        "problems": problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="matloop-faults-") as tmp:
        workdir = Path(tmp)
        base = workdir / "baseline"
        base.mkdir()
        code, out, wall = run_driver(write_config(base, 3))
        assert code == 0, "the uninterrupted run failed"
        baseline = summary(out)
        n_writes = sum(line.startswith("write") for line in out.splitlines())
        print(f"baseline: {n_writes} store writes, {wall:.0f} s", flush=True)
        trials = []
        for index in range(args.trials):
            result = trial(index, args.seed, baseline, n_writes, wall, workdir)
            print(json.dumps(result), flush=True)
            trials.append(result)

    injected = sum(t["kills"] + t["hiccups"] for t in trials)
    report = {
        "benchmark": "faults",
        "command": f"python benchmarks/faults.py --trials {args.trials} --seed {args.seed}",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "campaign": "Na-Cl, 2 rounds x (6 proposals incl. broken ones, 2 CHGNet relaxations)",
        "baseline": {"store_writes": n_writes, "wall_s": round(wall, 1),
                     "rounds": baseline["rounds"]},
        "trials": len(trials),
        "faults_injected": injected,
        "kills": sum(t["kills"] for t in trials),
        "store_hiccups": sum(t["hiccups"] for t in trials),
        "bad_candidates": sum(t["bad_candidates"] for t in trials),
        "runs_recovered": sum(t["recovered"] for t in trials),
        "recovered_fraction": sum(t["recovered"] for t in trials) / max(len(trials), 1),
        "records_lost": sum(t["records_lost"] for t in trials),
        "duplicate_relaxations": sum(t["duplicate_relaxations"] for t in trials),
        "reference_relaxations_redone": sum(t["reference_relaxations_redone"] or 0
                                            for t in trials),
        "per_trial": trials,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "per_trial"}, indent=2))


if __name__ == "__main__":
    main()
