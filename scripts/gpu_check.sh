#!/usr/bin/env bash
# The GPU check in one go (<= 8 minutes on one CUDA GPU): cuda-marked tests, a one-GPU torchrun run (world size 1,
# NCCL), benchmarks/train_speed.py and MSCFNet-4 on CIFAR-10 to the paper's 74.43 % with the seconds it took.
# Everything is written under OUTDIR (summary.json / summary.md first). See scripts/gpu_check.py for the steps.
#
#   scripts/gpu_check.sh OUTDIR                        # on the GPU machine, with .venv installed
#   MSIR_GPU_CHECK_CPU=1 scripts/gpu_check.sh OUTDIR   # the same steps on CPU on tiny data (what the tests run)
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUTDIR [--cpu-dry-run] [--budget SECONDS]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" scripts/gpu_check.py "$@"
