#!/usr/bin/env bash
# Set everything up, then run the whole test suite (slow end-to-end tests included).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast subset.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${MATLOOP_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh  # .ci/run has set up already
export DO_NOT_TRACK=1
exec .venv/bin/python -m pytest "$@"
