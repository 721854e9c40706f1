"""What every benchmark shares: where the data is, and how a result file is written.

A results file is written whole by one command, and says which: ``write_result`` adds a
``meta`` block with the command line, the git commit, the date, the machine (cores, load)
and the versions of the packages that shape the numbers. Data resolves from the repository
(``../shared/data`` beside the checkout) unless ``--shared-data`` or the
``MATLOOP_SHARED_DATA`` environment variable points elsewhere.

Example
-------
>>> from common import shared_data, write_result
>>> csv = shared_data() / "known_crystals_mp.csv.gz"
>>> write_result(RESULTS / "mine.json", {"crystals_per_s": 1.0})
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PACKAGES = ("matloop", "torch", "chgnet", "pymatgen", "ase", "atomate2", "jobflow", "prefect",
            "maggma", "numpy", "scikit-learn")  # fmt: skip


def shared_data(override: str | os.PathLike | None = None) -> Path:
    """The shared data folder: ``override``, else ``$MATLOOP_SHARED_DATA``, else
    ``../shared/data`` beside this checkout. Raises ``FileNotFoundError`` naming the path."""
    path = Path(override or os.environ.get("MATLOOP_SHARED_DATA") or ROOT.parent / "shared" / "data")
    if not path.is_dir():
        raise FileNotFoundError(
            f"shared data folder not found: {path} (pass --shared-data or set MATLOOP_SHARED_DATA)"
        )
    return path


def content_hash(*parts: Any) -> str:
    """A short hash of files (by content) and settings (by JSON), for cache keys."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_file():
            h.update(part.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10, check=True)  # fmt: skip
        # results files being (re)written are not changes to the code that ran
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!benchmarks/results"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout  # fmt: skip
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def run_metadata(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Command, commit, date, machine and package versions of this run."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in [_relative(sys.argv[0]), *sys.argv[1:]]),
        "commit": _git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1_5_15": [round(x, 2) for x in load] if load else None,
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {p: _version(p) for p in (*PACKAGES, *extra_packages)},
    }


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def write_result(path: str | os.PathLike, payload: dict[str, Any], **meta_extra: Any) -> Path:
    """Write ``payload`` whole, with a ``meta`` block, to ``path`` (JSON). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": {**run_metadata(), **meta_extra}, **payload}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return float(value)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send stdout to stderr, this process's and its children's (the Dask workers print)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
