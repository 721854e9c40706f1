"""Mutation testing (mutmut) of the code whose bugs would pass unnoticed: how the generators
learn, the store's claims, the hull and novelty evaluators. Not part of CI (slow).

Each target is a file, the functions of it to mutate and the fast tests that cover them.
A target runs in a scratch copy of ``src/`` and ``tests/`` (the checkout is never touched)
with ``mutmut run`` restricted to those functions' mutants; the counts per status come from
``mutmut results``. A *surviving* mutant is a change of the code that no test noticed.
Survivors judged equivalent (they cannot change behaviour: ``float("-INF")``, or only
which device a tensor is on, on this CPU-only machine) carry the reason, and are counted
apart (``EQUIVALENT``, ``equivalence``).

Where the time goes: mutmut runs the tests once in its own process, then forks one child
per mutant (``--jobs`` at a time) that reruns only the tests covering the mutated function,
fastest first, stopping at the first failure. So a killed mutant costs its fastest failing
test and a survivor costs all its tests; imports and anything the tests cache per process
(``tests/generators/test_learning.py`` caches its fitted models) are paid once.

Examples::

    nice -n 10 python benchmarks/mutation.py                      # every target
    nice -n 10 python benchmarks/mutation.py --targets novelty stability
    python benchmarks/mutation.py --schema                        # the JSON's keys, no run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, write_result

OUT = RESULTS / "mutation.json"
SEP = "\u01c1"  # mutmut's separator in the mutant names of methods: x<SEP>Class<SEP>method

#: name -> (file under src/, functions to mutate (mutmut name globs), tests that cover them)
TARGETS: dict[str, dict] = {
    "reinforce": {
        "file": "matloop/generators/reinforce.py",
        "functions": ["x_reinforce_step", f"x{SEP}LatentPolicy{SEP}*", "x_reinforce_generator"],
        "tests": [f"tests/generators/test_reinforce.py::{t}" for t in (
            "test_policy_starts_as_the_pretrained_sampler",
            "test_reinforce_step_moves_towards_rewarded_actions",
            "test_policy_densities_match_torch_distributions",
            "test_the_baseline_is_a_moving_average_of_rewards",
            "test_clipping_bounds_repeated_steps_on_one_batch",
            "test_reinforce_step_defaults_are_the_documented_ones",
            "test_reinforce_step_learns_the_anchor_choice_only_given_anchors_and_pool",
            "test_reinforce_step_takes_double_actions_and_integer_rewards",
            "test_one_step_is_one_plain_reinforce_step_and_the_logs_say_what_happened",
            "test_reinforce_step_is_the_documented_update")]
        + [f"tests/generators/test_learning.py::{t}" for t in (
            "test_reinforce_raises_the_policy_likelihood_of_rewarded_actions",
            "test_reinforce_defaults_are_the_documented_ones",
            "test_reinforce_keeps_learning_in_one_policy",
            "test_reinforce_favours_the_anchors_of_rewarded_crystals",
            "test_reinforce_without_a_remembered_anchor_skips_it",
            "test_reinforce_recovers_forgotten_actions_with_the_encoder")],
    },
    "finetune": {
        "file": "matloop/generators/torch_common.py",
        "functions": [f"x{SEP}TorchGenerator{SEP}update", "x_train_loop", "x_weighted_mean"],
        "tests": ["tests/generators/test_learning.py"],
    },
    "claims": {
        "file": "matloop/store/facade.py",
        "functions": [f"x{SEP}MatloopStore{SEP}claim_candidate",
                      f"x{SEP}MatloopStore{SEP}_claim_is_stale",
                      f"x{SEP}MatloopStore{SEP}renew_claims"],
        "tests": ["tests/store/test_claims.py"],
    },
    "stability": {
        # the numbers: entries, their corrections, the hull and formation energies (not the
        # plots, the scheme labels or the wording of error messages)
        "file": "matloop/evaluators/stability.py",
        "functions": ["x_make_entry", "x_mp_parameters", "x_compute_hull",
                      "x_formation_energy_per_atom", "x__check_ids", "x__check_scale",
                      f"x{SEP}HullResult{SEP}*"],
        "tests": ["tests/evaluators/test_stability.py"],
    },
    "novelty": {
        "file": "matloop/evaluators/novelty.py",
        "functions": ["*"],
        "tests": ["tests/evaluators/test_novelty.py"],
        # its wall-clock guard (500 structures < 20 s) fails on a loaded machine
        "deselect": ["tests/evaluators/test_novelty.py::test_different_formulas_never_compared"],
    },
}  # fmt: skip
#: survivors that cannot change behaviour: mutant name -> why
EQUIVALENT: dict[str, str] = {
    f"matloop.generators.reinforce.x{SEP}LatentPolicy{SEP}anchor_log_probs__mutmut_12":
        'float("-INF") is float("-inf"): Python parses the name case-insensitively',
}  # fmt: skip
DEVICE_ONLY = ("only where tensors live changes (a device argument dropped or None): the "
               "same on this CPU-only machine; telling it apart needs a GPU")  # fmt: skip
_DEVICES = (re.compile(r"(device\s*=\s*)?\b[\w.]*device\b(\(device\))?"), re.compile(r"\bdevice\b"))


def equivalence(mutant: str, diff: str) -> str | None:
    """Why a survivor cannot change behaviour here, or None: listed in ``EQUIVALENT``, or
    each changed line differs from the original only in a device argument."""
    if mutant in EQUIVALENT:
        return EQUIVALENT[mutant]
    lines = diff.splitlines()
    old = [line[1:] for line in lines if line.startswith("-")]
    new = [line[1:] for line in lines if line.startswith("+")]
    if not old or len(old) != len(new):
        return None
    return DEVICE_ONLY if all(_device_only(a, b) for a, b in zip(old, new)) else None


def _device_only(before: str, after: str) -> bool:
    def norm(text: str) -> str:
        return re.sub(r"\s+", "", text).replace(",)", ")").replace("(,", "(")

    for pattern in _DEVICES:
        for found in pattern.finditer(before):
            for stand_in in ("None", "device=None", ""):
                changed = before[: found.start()] + stand_in + before[found.end() :]
                if norm(changed) == norm(after):
                    return True
    return False
STATUSES = ("killed", "survived", "timeout", "suspicious", "no tests", "skipped", "not checked",
            "segfault", "check was interrupted by user", "caught by type check")  # fmt: skip


def module_name(file: str) -> str:
    return file.removesuffix(".py").replace("/", ".")


def scratch_copy(target: dict, where: Path) -> Path:
    """src/, tests/ and a pyproject.toml that points mutmut at one file and its tests."""
    work = where / "work"
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shared = ROOT.parent / "shared"
    if shared.is_dir():  # tests find ../shared beside the checkout
        (where / "shared").symlink_to(shared)
    tests = json.dumps(target["tests"] + [f"--deselect={t}" for t in target.get("deselect", [])])
    (work / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n"
        'markers = ["slow: slow"]\n'
        'filterwarnings = ["ignore::DeprecationWarning"]\n\n'
        "[tool.mutmut]\n"
        f'paths_to_mutate = ["src/{target["file"]}"]\n'
        f'only_mutate = ["src/{target["file"]}"]\n'
        'source_paths = ["src"]\n'
        f"pytest_add_cli_args_test_selection = {tests}\n"
        'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-x"]\n'
        "use_git_change_detection = false\n"
    )
    return work


def parse_results(text: str) -> dict[str, list[str]]:
    """``mutmut results --all true`` lines (``name: status``) grouped by status."""
    by_status: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            by_status.setdefault(status, []).append(name)
    return by_status


def run_target(name: str, target: dict, time_limit_s: float, mutmut: str, jobs: int) -> dict:
    globs = [f"{module_name(target['file'])}.{f}__mutmut_*" for f in target["functions"]]
    start = time.perf_counter()
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix=f"matloop-mutation-{name}-") as tmp:
        work = scratch_copy(target, Path(tmp))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DO_NOT_TRACK": "1"}
        env.pop("PYTHONPATH", None)  # mutmut puts its mutated copy first on sys.path
        finished = True
        try:
            done = subprocess.run([mutmut, "run", "--max-children", str(jobs), *globs], cwd=work,
                                  env=env, capture_output=True, text=True, timeout=time_limit_s)  # fmt: skip
            if done.returncode:
                print(f"{name}: mutmut run failed:\n{done.stdout[-3000:]}", file=sys.stderr)
        except subprocess.TimeoutExpired:
            finished = False
        listed = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, env=env,
                                capture_output=True, text=True, timeout=600).stdout  # fmt: skip
        by_status = parse_results(listed)
        wanted = {k: [m for m in v if any(_match(m, g) for g in globs)]
                  for k, v in by_status.items()}  # fmt: skip
        survived = []
        shown = mutant_diffs(wanted.get("survived", []), work, env)
        for mutant in wanted.get("survived", []):
            diff = [line for line in shown[mutant].splitlines()
                    if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
            survived.append({"mutant": mutant, "diff": "\n".join(diff),
                             "equivalent": equivalence(mutant, "\n".join(diff))})  # fmt: skip
    counts = {status: len(wanted.get(status, [])) for status in STATUSES}
    equivalent = sum(1 for m in survived if m["equivalent"])
    total = sum(len(v) for v in wanted.values())
    tested = counts["killed"] + counts["survived"] + counts["timeout"]
    return {
        "file": f"src/{target['file']}",
        "functions": target["functions"],
        "tests": target["tests"],
        "mutants": total,
        "counts": counts,
        "score": (counts["killed"] + counts["timeout"]) / tested if tested else None,
        "survived_equivalent": equivalent,
        "survived_not_equivalent": counts["survived"] - equivalent,
        "finished": finished,
        "seconds": round(time.perf_counter() - start),
        "jobs": jobs,
        "load_avg_1_5_15": {"before": load_before, "after": _load()},
        "survived": survived,
    }


#: ``mutmut show`` for many mutants in one process (a process per mutant costs seconds each)
DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
names = json.load(sys.stdin)
print(json.dumps({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in names}))
"""


def mutant_diffs(names: list[str], work: Path, env: dict[str, str]) -> dict[str, str]:
    """Each mutant's unified diff against the original, by name."""
    if not names:
        return {}
    done = subprocess.run([sys.executable, "-c", DIFFS], cwd=work, env=env, check=True,
                          input=json.dumps(names), capture_output=True, text=True, timeout=600)  # fmt: skip
    return json.loads(done.stdout)


def _load() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _match(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    p.add_argument("--time-limit", type=float, default=3600.0,
                   help="seconds per target; an unfinished target reports its unchecked mutants")
    p.add_argument("--jobs", type=int, default=2,
                   help="mutants tested at once (forked children of one mutmut process)")
    p.add_argument("--output", type=Path, default=OUT)
    p.add_argument("--schema", action="store_true", help="print the JSON's shape, run nothing")
    args = p.parse_args(argv)
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    modules = {}
    for name in args.targets:
        if args.schema:
            modules[name] = {"file": "", "functions": [], "tests": [], "mutants": 0,
                             "counts": dict.fromkeys(STATUSES, 0), "score": None,
                             "survived_equivalent": 0, "survived_not_equivalent": 0,
                             "finished": True, "seconds": 0, "jobs": args.jobs,
                             "load_avg_1_5_15": {"before": [], "after": []},
                             "survived": [{"mutant": "", "diff": "", "equivalent": ""}]}  # fmt: skip
        else:
            modules[name] = run_target(name, TARGETS[name], args.time_limit, mutmut, args.jobs)
            c = modules[name]["counts"]
            print(f"{name:10s} {modules[name]['mutants']:4d} mutants: {c['killed']} killed, "
                  f"{c['survived']} survived ({modules[name]['survived_equivalent']} equivalent), "
                  f"{c['timeout']} timeout, "
                  f"{c['not checked']} not checked ({modules[name]['seconds']} s)", flush=True)  # fmt: skip
    payload = {"tool": "mutmut", "modules": modules}
    if args.schema:
        json.dump(payload, sys.stdout, indent=1)
        print()
        return
    write_result(args.output, payload)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
