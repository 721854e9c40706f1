"""Start Dask workers for the batched fast path as SLURM jobs and keep them until Ctrl-C.

Prints the scheduler's address (and writes it to ``--address-file``); a campaign uses it with
``relaxer: {batched: true, executor: dask, executor_settings: {address: tcp://HOST:8786}}``.
Settings come from ``infra/dask/batched.yaml`` (``DASK_CONFIG=infra/dask``)::

    DASK_CONFIG=infra/dask python infra/dask/batched_cluster.py --jobs 16          # 16 GPUs
    DASK_CONFIG=infra/dask python infra/dask/batched_cluster.py --cpu --jobs 4     # 4 x 4 CPUs
    python infra/dask/batched_cluster.py --local 2                                 # this machine

Run it on a node the campaign process can reach (a login or service node), beside the Prefect
worker that runs the campaign flow.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1,
                        help="SLURM jobs: GPUs (one worker each), or CPU jobs with --cpu")
    parser.add_argument("--cpu", action="store_true", help="CPU nodes (slurm-cpu) instead")
    parser.add_argument("--local", type=int, default=0, help="local worker processes instead")
    parser.add_argument("--port", type=int, default=8786, help="scheduler port")
    parser.add_argument("--address-file", default="dask-scheduler.txt")
    args = parser.parse_args()

    from dask.distributed import Client

    if args.local:
        from dask.distributed import LocalCluster

        cluster = LocalCluster(n_workers=args.local, threads_per_worker=1, processes=True,
                               scheduler_port=args.port)  # fmt: skip
    else:
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(config_name="slurm-cpu" if args.cpu else "slurm-gpu",
                               scheduler_options={"port": args.port})  # fmt: skip
        cluster.scale(jobs=args.jobs)
    Path(args.address_file).write_text(cluster.scheduler_address + "\n")
    print("scheduler:", cluster.scheduler_address, "(written to", args.address_file + ")")
    with Client(cluster):
        try:
            while True:
                time.sleep(60)
        except KeyboardInterrupt:
            cluster.close()


if __name__ == "__main__":
    main()
