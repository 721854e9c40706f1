#!/usr/bin/env bash
# Prepare a Prefect server for scheduled matloop campaigns, then deploy them.
# Run from the project folder (runs start there: campaign paths resolve from it) with
# PREFECT_API_URL pointing at the server:
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   bash deployments/setup.sh                  # pool, queues, limits, all deployments
#   bash deployments/setup.sh -n na-cl-hourly  # ... and only that deployment
# Safe to run again: what exists is kept.
set -euo pipefail
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://127.0.0.1:4200/api}"
POOL=${MATLOOP_WORK_POOL:-matloop}
PREFECT_FILE=${MATLOOP_PREFECT_FILE:-$(dirname "$0")/prefect.yaml}

prefect work-pool inspect "$POOL" >/dev/null 2>&1 \
  || prefect work-pool create "$POOL" --type process
prefect work-queue inspect cpu --pool "$POOL" >/dev/null 2>&1 \
  || prefect work-queue create cpu --pool "$POOL"
prefect work-queue inspect gpu --pool "$POOL" >/dev/null 2>&1 \
  || prefect work-queue create gpu --pool "$POOL" --limit 1
prefect concurrency-limit inspect gpu >/dev/null 2>&1 \
  || prefect concurrency-limit create gpu 1

if [ "$#" -eq 0 ]; then set -- --all; fi
prefect --no-prompt deploy --prefect-file "$PREFECT_FILE" "$@"
echo "now start a worker:  prefect worker start --pool $POOL --work-queue cpu"
