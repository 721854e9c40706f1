"""The one-command GPU check runs its whole path on a CPU (``--device cpu --small``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_writes_its_json(tmp_path: Path, shared_data: Path) -> None:
    output = tmp_path / "gpu_check_small.json"
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--wheels", str(tmp_path / "no-wheels"),
         "--device", "cpu", "--small", "--shared-data", str(shared_data),
         "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(output.read_text())

    assert report["meta"]["command"].startswith("python benchmarks/gpu_check.py --device cpu")
    assert report["meta"]["versions"]["chgnet"]
    paths = report["paths"]
    assert paths["bare"]["crystals"] == paths["batched_compare"]["crystals"] == 2
    assert paths["batched_large"]["crystals"] == 4
    assert all(p["crystals_per_s"] > 0 for p in paths.values())
    agree = report["agreement_bare_vs_batched"]
    assert agree["compared"] == 2 and agree["within_5_meV_atom"] == 2
    assert agree["structure_matches"] == 2
    assert report["peak_gpu_memory_gib"] is None  # a CPU run
    top = report["profile_large"]["top_by_own_time"]
    assert top and all({"function", "calls", "own_s"} <= set(row) for row in top)
