"""Help a campaign's current round relax its candidates with Dask workers.

Run beside ``matloop run`` (or a scheduled run) that points at the same store: when the round
reaches its relax step, every worker claims candidates one at a time from the store, so the
round's relaxations spread over all of them and none is relaxed twice; the round goes on
(evaluate, learn) once every claim is settled::

    DASK_CONFIG=infra/dask python infra/dask/relax_workers.py CONFIG --jobs 4   # SLURM
    python infra/dask/relax_workers.py CONFIG --local 2                          # this machine

Dask workers must be single-threaded (a claim belongs to a process).
"""

from __future__ import annotations

import argparse
import time


def relax_current_round(config_path: str, wait_s: float = 3600.0) -> dict:
    """Wait until the campaign's current round is screened, then relax with it."""
    from matloop.config import load_config
    from matloop.loop import CampaignRun

    run = CampaignRun(load_config(config_path))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        doc = run.current_round()
        if doc is not None and doc.status != "completed" and "screen" in doc.steps_done:
            result = run.relax(doc.round)
            return {"round": doc.round, "worker": run.store.worker_id(), **result.counts}
        time.sleep(5)
    return {"round": None, "worker": run.store.worker_id()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="campaign file (its store must be shared: MongoDB)")
    parser.add_argument("--jobs", type=int, default=1, help="SLURM jobs (dask-jobqueue)")
    parser.add_argument("--local", type=int, default=0, help="local worker processes instead")
    args = parser.parse_args()

    from dask.distributed import Client

    if args.local:
        from dask.distributed import LocalCluster

        cluster = LocalCluster(n_workers=args.local, threads_per_worker=1, processes=True)
        n = args.local
    else:
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster()  # settings from jobqueue.yaml (DASK_CONFIG)
        cluster.scale(jobs=args.jobs)
        n = args.jobs * cluster._dummy_job.worker_processes
    with Client(cluster) as client:
        futures = [
            client.submit(relax_current_round, args.config, pure=False, key=f"relax-{i}")
            for i in range(n)
        ]
        for result in client.gather(futures):
            print(result)
    cluster.close()


if __name__ == "__main__":
    main()
