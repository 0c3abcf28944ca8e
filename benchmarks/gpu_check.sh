#!/usr/bin/env bash
# GPU readiness check (issue 17): paper-scale step timings of both models at 32 / bf16-mixed /
# 16-mixed, a few minutes of real training of the paper-scale Hamiltonian config (learning curve
# + generation grid), one table. Installs nothing; needs the project's environment only.
#   benchmarks/gpu_check.sh                                  # cuda when available, else cpu
#   benchmarks/gpu_check.sh --device cuda --minutes 4 --out runs/gpu_check
#   benchmarks/gpu_check.sh --device cpu --minutes 0.2 --tiny  # CPU fallback (tests/test_gpu_check.py)
# All options: benchmarks/gpu_check.sh --help (benchmarks/gpu_check.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
if ! command -v "$PYTHON" >/dev/null 2>&1 && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
