#!/usr/bin/env bash
# Fresh-machine set-up: system packages (Fashion-MNIST IDX files, the fortunes text corpus, Chromium for report
# tests, nginx for the Fleet-only gateway of deployed federations),
# then dpfl with the CPU build of torch pinned (a bare `torch` would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist fortunes chromium nginx-light >/dev/null
fi
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
echo "dpfl installed: $(command -v dpfl)"
