#!/bin/bash
# One prepared run of `benchmarks.accelerator` on a lent GPU machine (the
# `device` tool): its image has JAX, Flax, optax and orbax but not grain or
# ml_collections, which travel as wheels in .whl/ (see the README's
# "Accelerator" section). Each stage's output goes to $OUT; a failing canary
# (--tiny) stops the run early so that the lease has time for a second try.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/accelerator_out}; mkdir -p "$OUT"
# The dated reports (benchmarks/report.py) come back with $OUT: copy the
# full-size ones to docs/reports/ (and rerun `python -c "from benchmarks import
# report; report.write_index()"`).
export SPECTRAL_DENSITY_REPORT_DIR="${SPECTRAL_DENSITY_REPORT_DIR:-$OUT/reports}"
if ! python3 -c "import grain, ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
} 2>&1 | tee "$OUT/device.txt"
# Extra arguments (e.g. --hessian_batch 128) go to every full-size run.
if [ "${TINY_S:-75}" != 0 ]; then
  timeout "${TINY_S:-75}" python3 -m benchmarks.accelerator --tiny 2>&1 | tee "$OUT/tiny.txt" || exit 2
fi
# The matmul-precision row: ResNet-32 at JAX's default and at full float32.
if [ "${PRECISION_S:-240}" != 0 ]; then
  timeout "${PRECISION_S:-240}" python3 -m benchmarks.accelerator --only cifar \
    --precision_only 2>&1 | tee "$OUT/precision.txt"
fi
for case in ${CASES:-cifar imagenet}; do
  # The in-process deadline leaves the timeout 40 s for start-up and margin.
  timeout "${CASE_S:-270}" python3 -m benchmarks.accelerator --only "$case" \
    --deadline_s "$((${CASE_S:-270} - 40))" "$@" 2>&1 | tee "$OUT/$case.txt"
done
