#!/usr/bin/env bash
# Set everything up, then run the quickstart campaign on the embedded store.
# Extra arguments go to `matloop run` (e.g. --rounds 1). Running it again resumes the campaign.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/matloop run deployments/campaigns/quickstart.yaml "$@"
