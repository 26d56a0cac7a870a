#!/usr/bin/env bash
# Install the PostgreSQL server from Debian packages when it is not there yet (non-interactive).
# The tests start their own throwaway cluster on 127.0.0.1 (tests/conftest.py); this script
# only makes sure initdb/pg_ctl exist. Needs root (or sudo) on a fresh Debian/Ubuntu machine.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# The tests start their own throwaway cluster; a system cluster the package may start is unused.
$SUDO apt-get install -y -q --no-install-recommends postgresql
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null
