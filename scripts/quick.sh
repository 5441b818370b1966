#!/usr/bin/env bash
# Main job: set up, get the data (DPMAMMO_DATA if set, else download to the user cache),
# and run the quick privacy-utility study (CPU, minutes; benchmarks/README.md has the measurement).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh ray
.venv/bin/dpmammo data fetch
.venv/bin/dpmammo study --preset quick --out runs/quick "$@"
