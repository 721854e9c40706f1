"""Screenshots of what a campaign looks like in the Prefect UI (not a test).

Starts a Prefect server on localhost with its own PREFECT_HOME in a temporary folder, serves a
small Na–Cl campaign on a 30-second schedule against it (`matloop serve`, real CHGNet
relaxations) until two scheduled runs have each added a round (~2 min), then renders UI
pages in headless Chromium and saves them as PNGs:

    python scripts/screenshot_ui.py                  # → docs/img/ui-*.png
    python scripts/screenshot_ui.py --keep           # leave the server up to browse it

Needs `chromium` (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from matloop.flows.server import LocalPrefectServer  # noqa: E402

CAMPAIGN = {
    "name": "ui-demo-na-cl",
    "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
    "budget": {"rounds": 2, "candidates_per_round": 8, "relaxations_per_round": 3},
    "relaxer": {"steps": 150},
    "seed": 1,
}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    sys.exit("chromium not found: apt-get install -y chromium")


def screenshot(url: str, out: Path, size: str = "1400,1000", budget_ms: int = 30000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
             f"--screenshot={out}", f"--window-size={size}", url],
            check=True, capture_output=True, timeout=120,
        )
    try:  # smaller files: a 256-colour palette is plenty for a UI
        from PIL import Image

        Image.open(out).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(
            out, optimize=True
        )
    except ImportError:
        pass
    print(f"  {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}  ←  {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--keep", action="store_true", help="keep the server running")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="matloop-ui-"))
    server = LocalPrefectServer(work / "prefect").start()
    print(f"Prefect server at {server.ui_url} (home {server.home})")
    try:
        config = work / "campaign.yaml"
        config.write_text(json.dumps({
            **CAMPAIGN, "store": f"sqlite://{work}/store.db", "output": str(work / "out"),
        }))
        import httpx

        api = httpx.Client(base_url=server.api_url, timeout=30)
        name = CAMPAIGN["name"]
        started = time.perf_counter()
        serve = subprocess.Popen(  # a scheduled deployment: one round every 30 s
            [sys.executable, "-m", "matloop.cli", "serve", str(config), "--interval", "30",
             "--rounds", "1"],
            env=server.client_env(PREFECT_LOGGING_LEVEL="INFO", OMP_NUM_THREADS="1"),
        )
        try:
            while True:  # until two scheduled runs have completed
                assert serve.poll() is None, "matloop serve stopped"
                done = [
                    r for r in api.post("/flow_runs/filter", json={}).json()
                    if r["name"].startswith(f"{name}-scheduled") and r["state_type"] == "COMPLETED"
                ]
                if len(done) >= 2:
                    break
                assert time.perf_counter() - started < 900, "no two scheduled runs in 15 min"
                time.sleep(3)
        finally:
            serve.send_signal(signal.SIGINT)  # Ctrl-C: the schedule is paused
            serve.wait(timeout=60)
        print(f"two scheduled runs in {time.perf_counter() - started:.0f} s")

        runs = {r["name"]: r for r in api.post("/flow_runs/filter", json={}).json()}
        round_run = runs[f"{name}-round-2"]
        scheduled_run = min(done, key=lambda r: r["start_time"])
        artifacts = api.post("/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [round_run["id"]]}}
        }).json()
        by_key = {a["key"]: a for a in artifacts if a["key"]}
        (progress,) = [a for a in artifacts if a["type"] == "progress"]

        ui = server.ui_url
        pages = {
            "ui-scheduled-flow-run.png": f"{ui}/runs/flow-run/{scheduled_run['id']}",
            "ui-round-flow-run.png": f"{ui}/runs/flow-run/{round_run['id']}",
            "ui-artifacts.png": f"{ui}/artifacts",
            "ui-artifact-rounds.png": f"{ui}/artifacts/artifact/{by_key[f'{name}-rounds']['id']}",
            "ui-artifact-best.png": f"{ui}/artifacts/artifact/{by_key[f'{name}-best']['id']}",
            "ui-artifact-summary.png":
                f"{ui}/artifacts/artifact/{by_key[f'{name}-summary']['id']}",
            "ui-artifact-progress.png": f"{ui}/artifacts/artifact/{progress['id']}",
            "ui-flow-runs.png": f"{ui}/runs",
        }
        for filename, url in pages.items():
            screenshot(url, args.out / filename)
        if args.keep:
            print(f"browse {ui} — Ctrl-C stops the server")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("DO_NOT_TRACK", "1")
    main()
