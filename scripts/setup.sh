#!/usr/bin/env bash
# Create .venv (once) and install dpmammo with the given extras. Idempotent.
# torch/torchvision are pinned to the builds this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check \
  -e ".${extras:+[$extras]}" "torch==2.14.1" "torchvision==0.29.1"
