#!/usr/bin/env bash
# Install Chromium from Debian packages when it is not there yet (non-interactive). The browser
# tests (tests/browser/) drive it headless through Playwright's Python client with
# executable_path=/usr/bin/chromium: Playwright's own browser download needs a CDN this machine
# cannot reach, Debian's Chromium needs only the package registry. Needs root (or sudo).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi
chromium --version
