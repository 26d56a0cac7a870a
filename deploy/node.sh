#!/usr/bin/env bash
# Install Node.js from Debian packages when it is not there yet (non-interactive). The test suite
# runs the independent report verifier (deploy/verify/verify-report.mjs, Node's standard library
# only) against reports Python signed; it needs Node.js 18 or newer. Needs root (or sudo).
set -euo pipefail
if ! command -v node >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends nodejs
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "node $(node --version) is too old for deploy/verify/verify-report.mjs (needs 18+)" >&2
  exit 1
fi
