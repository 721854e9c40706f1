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

Concurrent runs (issue #13): two or four processes start the same campaign on one store at
once, each taking the campaign lease as ``matloop run`` does; exactly one may work, the others
must refuse at once. Kills while holding the lease: the holder is SIGKILLed at a random
moment and two processes race to take over. Every trial counts duplicate relaxations of
candidates and of hull references, and duplicate generations (proposals beyond those of the
uninterrupted run: a round generated twice). Bad inputs: every bad input of issue #13 is given
to the real ``matloop`` command, recording its exit status, first line and the seconds to
its first error line.

    nice -n 10 python benchmarks/faults.py --trials 10 --seed 0   # benchmarks/results/faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import write_result  # noqa: E402

DRIVER = ROOT / "tests" / "loop" / "crash_driver.py"
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
        "budget": {"rounds": ROUNDS["n"], "max_rounds": ROUNDS["n"], "candidates_per_round": 6,
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


def start_driver(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    """The driver in the background; with ``log``, its output goes to ``log``.out/.err
    (files, so a process polled for its end never blocks on a full pipe)."""
    out = err = subprocess.PIPE
    if log is not None:
        out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")  # noqa: SIM115
    return subprocess.Popen([sys.executable, str(DRIVER), str(config), "--bad", *args],
                            stdout=out, stderr=err, text=True, env=ENV)


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
    return judge(index, "kill", faults, baseline, final, previous, lost_records)


def judge(index: int, kind: str, faults: list[dict], baseline: dict, final: dict | None,
          previous: dict | None, lost_records: int, **extra) -> dict:
    """One trial's counts, comparing the finished campaign with the uninterrupted one."""
    problems = differences(baseline, final) if final is not None else ["did not finish"]
    jobs = (final or previous or {"jobs": {}})["jobs"]
    duplicates = sum(n - 1 for cid, n in jobs.items() if n > 1 and ":" not in cid)
    bad = sum(1 for cid, r in (final or {}).get("reasons", {}).items()
              if "unanalysable" in r or "atoms >" in r or "interatomic" in r)
    proposals = (final or previous or {}).get("proposals", baseline["proposals"])
    return {
        "trial": index,
        "kind": kind,
        "faults": faults,
        "kills": sum(bool(f.get("killed")) for f in faults),
        "hiccups": sum(f.get("hiccups", 0) for f in faults),
        "bad_candidates": bad,
        "recovered": final is not None and not problems,
        "records_lost": lost_records,
        "duplicate_relaxations": duplicates,
        # two runs relaxing the same hull references at once (what the lease prevents) ...
        "duplicate_reference_relaxations": (reference_reruns(final) or 0) if final and
        kind.startswith("concurrent") else 0,
        # ... apart from a reference relaxation a SIGKILL cut short and the rerun redid
        "reference_relaxations_redone_after_kill": reference_reruns(final) if final and
        not kind.startswith("concurrent") else 0,
        "duplicate_generations": max(0, proposals - baseline["proposals"]),
        "problems": problems,
        **extra,
    }


def concurrent_trial(index: int, n_processes: int, baseline: dict, workdir: Path) -> dict:
    """``n_processes`` runs of one campaign started at once, each taking the lease."""
    folder = workdir / f"trial-{index}"
    folder.mkdir()
    config = write_config(folder, 3)
    logs = [folder / f"run-{i}" for i in range(n_processes)]
    procs = [start_driver(config, "--lease", log=log) for log in logs]
    started = time.monotonic()
    ended: dict[int, float] = {}
    while len(ended) < len(procs):  # when each process ended, not when it was read
        for i, proc in enumerate(procs):
            if i not in ended and proc.poll() is not None:
                ended[i] = time.monotonic() - started
        time.sleep(0.1)
    results = []
    for i, proc in enumerate(procs):
        out, err = (Path(f"{logs[i]}.{kind}").read_text() for kind in ("out", "err"))
        results.append((proc.returncode, out, err, ended[i]))
    ran = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] == 3]
    for code, _, err, _ in results:
        if code not in (0, 3):
            print(err[-3000:], file=sys.stderr)
    final = summary(ran[0][1]) if len(ran) == 1 else (snapshot(config) if ran else None)
    faults = [{"kind": f"concurrent-{n_processes}", "ran": len(ran), "refused": len(refused),
               "refused_within_s": round(max((r[3] for r in refused), default=0.0), 1)}]
    return judge(index, f"concurrent-{n_processes}", faults, baseline, final, None, 0,
                 runs_that_worked=len(ran), runs_refused=len(refused))


def kill_holder_trial(index: int, seed: int, baseline: dict, wall_s: float,
                      workdir: Path) -> dict:
    """The lease holder is SIGKILLed at a random moment; two runs then race to take over."""
    rng = np.random.default_rng([seed, index, 13])
    folder = workdir / f"trial-{index}"
    folder.mkdir()
    config = write_config(folder, 3)
    after = float(rng.uniform(3.0, wall_s))
    code, out, _ = run_driver(config, "--lease", kill_after_s=after)
    faults = [{"kind": "kill-lease-holder", "after_s": round(after, 1),
               "killed": code == -signal.SIGKILL}]
    previous = snapshot(config) if code != 0 else None
    procs = [start_driver(config, "--lease") for _ in range(2)]
    results = [(proc.communicate()[0], proc.returncode) for proc in procs]
    ran = [out for out, rc in results if rc == 0]
    faults.append({"kind": "race-to-take-over", "ran": len(ran),
                   "refused": sum(rc == 3 for _, rc in results)})
    final = summary(ran[0]) if len(ran) == 1 else None
    lost_records = lost(previous, final) if previous is not None and final else 0
    return judge(index, "kill-lease-holder", faults, baseline, final, previous, lost_records)


# -- bad inputs: the real `matloop` command, seconds to its first error line -----------------
HOSTILE = """import os, pickle, torch
class Boom:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"format": 1, "boom": Boom()}}, "{path}")
"""


#: The bad inputs of issue #13's table, in the order they are tried.
BAD_INPUTS = (
    "seed file missing",
    "seed file empty",
    "seed CSV without cif column",
    "seed file with unsupported suffix",
    "seed file with no crystal of the space (warning)",
    "hostile checkpoint (sample)",
    "hostile checkpoint (campaign)",
    "altered checkpoint without .sha256",
    "train -o onto a file that is not a checkpoint",
    "train -o onto an existing checkpoint",
    "output folder not writable",
    "export into a file",
    "mongodb:// where nothing listens",
    "300-character campaign name",
)


def bad_inputs(folder: Path) -> list[dict]:
    """Each bad input of issue #13 through ``python -m matloop.cli``."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.csv").write_text("")
    (folder / "header-only.csv").write_text("material_id,cif\n")
    (folder / "no-cif.csv").write_text("a,b\n1,2\n")
    (folder / "seeds.json").write_text("{}")
    (folder / "existing.txt").write_text("my notes\n")
    marker = folder / "pwned"
    subprocess.run([sys.executable, "-c", HOSTILE.format(marker=marker,
                                                         path=folder / "hostile.pt")],
                   check=True, env=ENV)
    good = folder / "model.pt"
    trained = subprocess.run([sys.executable, "-m", "matloop.cli", "train", "crystal_vae",
                              str(shared_csv()), "-o", str(good), "--epochs", "1",
                              "--limit", "20"], capture_output=True, text=True, env=ENV)
    assert trained.returncode == 0, trained.stderr
    tampered = folder / "tampered.pt"
    shutil.copy(good, tampered)
    with open(tampered, "r+b") as fh:  # altered weights, sidecar deleted
        fh.seek(-64, 2)
        fh.write(b"\x00" * 16)
    base = {"name": "bad-inputs", "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
            "store": f"monty://{folder}/store", "output": str(folder / "out")}

    def config(file: str, **changes) -> Path:
        path = folder / f"{file}.json"
        path.write_text(json.dumps({**base, **changes}))
        return path

    def seeds(path) -> dict:
        return {"seed_data": {"files": [{"path": str(path)}]}}

    vae = {"name": "crystal_vae"}
    cases = {
        "seed file missing": ["run", config("missing", **seeds(folder / "nope.csv"))],
        "seed file empty": ["run", config("empty", **seeds(folder / "empty.csv"))],
        "seed CSV without cif column": ["run", config("nocif", **seeds(folder / "no-cif.csv"))],
        "seed file with unsupported suffix": ["run", config("json", **seeds(folder /
                                                                            "seeds.json"))],
        "seed file with no crystal of the space (warning)": [
            "run", config("header", **seeds(folder / "header-only.csv"), output="/proc/x")],
        "hostile checkpoint (sample)": ["sample", str(folder / "hostile.pt"), "-o",
                                        str(folder / "cifs")],
        "hostile checkpoint (campaign)": ["run", config("hostile", generators=[
            {**vae, "checkpoint": str(folder / "hostile.pt")}])],
        "altered checkpoint without .sha256": ["sample", str(tampered), "-o",
                                               str(folder / "cifs")],
        "train -o onto a file that is not a checkpoint": [
            "train", "crystal_vae", str(shared_csv()), "-o", str(folder / "existing.txt")],
        "train -o onto an existing checkpoint": [
            "train", "crystal_vae", str(shared_csv()), "-o", str(good)],
        "output folder not writable": ["run", config("readonly", output="/proc/matloop")],
        "export into a file": ["export", "bad-inputs", "--output",
                               str(folder / "existing.txt"), "--store",
                               f"monty://{folder}/store"],
        "mongodb:// where nothing listens": ["run", config(
            "mongo", store="mongodb://matloop:Pl4nted@127.0.0.1:9/db")],
        "300-character campaign name": ["run", config("longname", name="n" * 300)],
    }
    assert tuple(cases) == BAD_INPUTS
    rows = []
    for label, argv in cases.items():
        rows.append({"input": label, **first_error(argv)})
        print(json.dumps(rows[-1]), flush=True)
    assert not marker.exists(), "the hostile checkpoint ran its code"
    return rows


def shared_csv() -> Path:
    from common import shared_data

    return shared_data() / "perov_5" / "val.csv.gz"


def first_error(argv: list[str]) -> dict:
    """Exit status, the first error line and the seconds until it appeared (and the same
    for the first warning)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "matloop.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**ENV, "COLUMNS": "200"})
    timed = [(line.rstrip(), round(time.monotonic() - start, 2)) for line in proc.stdout]
    return error_row(proc.wait(), timed)


def error_row(code: int, timed: list[tuple[str, float]]) -> dict:
    """What a bad input's output says: ``timed`` is (line, seconds since start) pairs."""
    error = warning = None
    lines = [line for line, _ in timed]
    for line, now in timed:
        if error is None and (line.startswith("error") or "problem(s) in the campaign" in line
                              or "is already running" in line):
            error = (line, now)
        if warning is None and line.startswith("warning"):
            warning = (line, now)
    return {"exit_code": code, "first_error": error and error[0],
            "seconds_to_first_error": error and error[1],
            "first_warning": warning and warning[0],
            "seconds_to_first_warning": warning and warning[1],
            "lines": len(lines),
            "traceback": any("Traceback" in line for line in lines)}


#: Rounds of the benchmark campaign (``--rounds``).
ROUNDS = {"n": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10,
                        help="concurrent (2 and 4 processes), lease-holder-kill and kill "
                        "trials, in turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the campaign")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    parser.add_argument("--skip-bad-inputs", action="store_true")
    parser.add_argument("--schema", action="store_true",
                        help="print the JSON this script writes, from synthetic trials")
    args = parser.parse_args()
    ROUNDS["n"] = args.rounds
    if args.schema:
        print(json.dumps(schema_report(args)))
        return

    kinds = ["concurrent-2", "kill-lease-holder", "concurrent-4", "kill"]
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
            kind = kinds[index % len(kinds)]
            if kind == "kill":
                result = trial(index, args.seed, baseline, n_writes, wall, workdir)
            elif kind.startswith("concurrent"):
                result = concurrent_trial(index, int(kind.split("-")[1]), baseline, workdir)
            else:
                result = kill_holder_trial(index, args.seed, baseline, wall, workdir)
            print(json.dumps(result), flush=True)
            trials.append(result)
            write_result(args.output, {"partial": True, "per_trial": trials})
        inputs = [] if args.skip_bad_inputs else bad_inputs(workdir / "bad-inputs")

    report = build_report(args, n_writes, wall, baseline, trials, inputs)
    path = write_result(args.output, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("per_trial", "bad_inputs")},
                     indent=2))
    print(f"wrote {path}")


def schema_report(args) -> dict:
    """The report built by the same code from one synthetic trial of each kind."""
    from crash_driver import METRICS

    rounds = [{"round": 1, "status": "completed", "steps_done": ["generate"],
               "metrics": dict.fromkeys(METRICS, 0)}]
    baseline = {"rounds": rounds, "candidates": {}, "reasons": {}, "relaxations": {},
                "evaluations": {}, "jobs": {}, "proposals": 6}
    trials = [
        judge(0, "concurrent-2", [{"kind": "concurrent-2", "ran": 1, "refused": 1,
                                   "refused_within_s": 1.0}], baseline, baseline, None, 0,
              runs_that_worked=1, runs_refused=1),
        judge(1, "kill", [{"kind": "kill-before-write", "write": 1, "torn": False,
                           "killed": True, "hiccups": 0, "last_write": None}],
              baseline, baseline, baseline, 0),
    ]
    inputs = [{"input": label, **error_row(2, [("error: x", 1.0)])} for label in BAD_INPUTS]
    return build_report(args, 1, 1.0, baseline, trials, inputs)


def build_report(args, n_writes: int, wall: float, baseline: dict, trials: list[dict],
                 inputs: list[dict]) -> dict:
    kinds = ["concurrent-2", "kill-lease-holder", "concurrent-4", "kill"]
    injected = sum(t["kills"] + t["hiccups"] for t in trials)
    concurrent = [t for t in trials if t["kind"].startswith("concurrent")]
    return {
        "benchmark": "faults",
        "campaign": f"Na-Cl, {args.rounds} round(s) x (6 proposals incl. broken ones, "
                    "2 CHGNet relaxations), sqlite:// store",
        "baseline": {"store_writes": n_writes, "wall_s": round(wall, 1),
                     "rounds": baseline["rounds"], "proposals": baseline["proposals"]},
        "trials": len(trials),
        "trials_by_kind": {k: sum(t["kind"] == k for t in trials) for k in kinds},
        "faults": injected + sum(len(t["faults"]) for t in concurrent),
        "faults_injected": injected,
        "kills": sum(t["kills"] for t in trials),
        "store_hiccups": sum(t["hiccups"] for t in trials),
        "concurrent_runs_started": sum(t["faults"][0]["ran"] + t["faults"][0]["refused"]
                                       for t in concurrent),
        "concurrent_runs_that_worked": sum(t["runs_that_worked"] for t in concurrent),
        "bad_candidates": sum(t["bad_candidates"] for t in trials),
        "runs_recovered": sum(t["recovered"] for t in trials),
        "recovered_fraction": sum(t["recovered"] for t in trials) / max(len(trials), 1),
        "records_lost": sum(t["records_lost"] for t in trials),
        "duplicate_relaxations": sum(t["duplicate_relaxations"] for t in trials),
        "duplicate_reference_relaxations": sum(t["duplicate_reference_relaxations"] or 0
                                               for t in trials),
        "duplicate_generations": sum(t["duplicate_generations"] for t in trials),
        "reference_relaxations_redone_after_kill": sum(
            t["reference_relaxations_redone_after_kill"] or 0 for t in trials),
        "bad_inputs": inputs,
        "seconds_to_first_error": {row["input"]: row["seconds_to_first_error"]
                                   for row in inputs},
        "per_trial": trials,
    }


if __name__ == "__main__":
    main()
