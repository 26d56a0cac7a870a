#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs the project, then runs
#   demo  - a complete federated study on loopback with synthetic sites, ending in a signed report
#   test  - the test suite
#   lint  - ruff and mypy as configured in pyproject.toml (CI runs it before the tests)
# Extra arguments are passed on (e.g. `bash deploy/dev.sh test -k psm`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# Re-install only when the dependency list changed.
stamp="$VENV/.rehealth-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch first: the CPU wheel is on local disk; an unpinned torch pulls a multi-GB CUDA build.
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e ".[test,postgres]"
  echo "$want" > "$stamp"
fi

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PYTHONHASHSEED=${PYTHONHASHSEED:-0}
cmd=${1:-}; shift || true
case "$cmd" in
  demo) exec "$VENV/bin/rehealth" demo "$@" ;;
  lint) # Installed tools from .venv, so CI checks with the pinned versions (see pyproject.toml).
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        exec "$VENV/bin/mypy" ;;
  test) bash deploy/postgres.sh  # the store tests also run on a real PostgreSQL server
        bash deploy/node.sh      # the report verifier test runs deploy/verify/verify-report.mjs
        bash deploy/browser.sh   # the web console tests drive headless Chromium
        # One process by default: the fault tests bound how fast a killed SuperNode is detected,
        # which holds for a federation alone on the machine, not beside the 20-firm study.
        # REHEALTH_TEST_WORKERS=2 runs two pytest-xdist workers that each take whole modules
        # (order: tests/conftest.py), at most two federations at once, on a machine with cores
        # to spare.
        if [ "${REHEALTH_TEST_WORKERS:-0}" != 0 ]; then
          set -- -n "$REHEALTH_TEST_WORKERS" --dist loadscope --no-loadscope-reorder "$@"
        fi
        exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash deploy/dev.sh {demo|test|lint} [args...]" >&2; exit 2 ;;
esac
