#!/usr/bin/env bash
# Start a SuperLink and one SuperNode per site of a study spec on 127.0.0.1 (free ports),
# wait until they are up, and stop them all on Ctrl-C or when any one exits.
#   bash deploy/local-federation.sh --spec demo-out/data/study.toml
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m coordinator.cli.local_federation "$@"
