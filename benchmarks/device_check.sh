#!/usr/bin/env bash
# One command for a machine with a GPU (about 2 minutes there, 5 at most): trains 50 steps,
# predicts a 4 mm simulated slide, prints throughput and checks that the GPU map agrees with the
# CPU map. Without a GPU it runs the small CPU parts and says that the GPU parts were skipped.
#   benchmarks/device_check.sh [--out DIR] [--cpu-only]
# PYTHON picks the interpreter (default: python on PATH); the JSON result goes to stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec timeout 300 "${PYTHON:-python}" "$here/device_check.py" "$@"
