"""MATLOOP_STRICT_SKIPS=1 (set by .ci/run) turns every skip but a missing CUDA device into a
failure, so CI cannot pass by skipping what it is meant to run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
TESTS = '''
import pytest

def test_needs_shared_data():
    pytest.skip("reference data folder ../shared/data is absent")

@pytest.mark.skipif(True, reason="CP2K is not installed")
def test_needs_cp2k():
    pass

@pytest.mark.skipif(True, reason="no CUDA device")
def test_needs_a_gpu():
    pass

def test_runs():
    assert True
'''


@pytest.mark.parametrize("strict", ["1", ""])
def test_only_cuda_may_skip_in_strict_mode(tmp_path, strict):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(TESTS)
    env = {**os.environ, "MATLOOP_STRICT_SKIPS": strict}
    done = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    last = done.stdout.strip().splitlines()[-1]
    if strict:
        # a skip in a test fails it; a skipif (evaluated at setup) is an error
        assert "1 failed, 1 passed, 1 skipped, 1 error" in last, done.stdout
        assert "MATLOOP_STRICT_SKIPS=1 requires it to run" in done.stdout
        assert "SKIPPED [1] test_inner.py" in done.stdout and "no CUDA device" in done.stdout
    else:
        assert "1 passed, 3 skipped" in last, done.stdout
