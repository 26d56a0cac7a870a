#!/usr/bin/env bash
# Build the ReHealth Core image from the repository root.
#   bash deploy/container/build.sh [--wheelhouse] [TAG]        (TAG default rehealth/core:0.1.0)
# --wheelhouse: first download every wheel the image needs with this machine's pip (its
#   index, its proxy and CA, its local CPU torch wheel) into deploy/container/wheelhouse/, so the
#   build installs offline (--no-index). Use it where the build cannot reach the indexes itself:
#   an air-gapped host, or a TLS-intercepting proxy whose CA the base image does not trust.
# BASE_IMAGE=... overrides the base (default python:3.11-slim-bookworm; any Debian-like image
#   with Python 3.11 and its venv module).
set -euo pipefail
cd "$(dirname "$0")/../.."
wheelhouse=0
if [ "${1:-}" = "--wheelhouse" ]; then wheelhouse=1; shift; fi
tag=${1:-rehealth/core:0.1.0}
if [ "$wheelhouse" = 1 ]; then
  pip=${PIP:-.venv/bin/pip}
  dest=deploy/container/wheelhouse
  # torch first and pinned: where this machine's pip sees the local CPU wheel (2.13.0+cpu sorts
  # above PyPI's CUDA 2.13.0), that is the one downloaded
  "$pip" download -q --dest "$dest" "torch==2.13.0"
  "$pip" download -q --dest "$dest" ".[postgres]" "setuptools>=68"
  ls "$dest"/torch-2.13.0*.whl >/dev/null
fi
build_args=()
if [ -n "${BASE_IMAGE:-}" ]; then build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi
docker build -f deploy/container/Dockerfile "${build_args[@]}" -t "$tag" .
docker image inspect "$tag" --format 'image {{index .RepoTags 0}}: {{.Size}} bytes'
