#!/usr/bin/env bash
# One command for the accelerator benchmark (benchmarks/gpu_suite.py): prints a table and writes
# benchmarks/results/gpu_suite_{full,small}.json (or $OUT/ when set).
#
#   benchmarks/gpu.sh             # on a GPU machine (within ~8 minutes on one H200)
#   SMALL=1 benchmarks/gpu.sh     # ResNet-18 at 64x32: a few minutes on a CPU
#   STEPS=5 benchmarks/gpu.sh     # fewer timed steps per case
#   CASES=jax,profile,torch BATCHES='32,4' benchmarks/gpu.sh   # a subset (gpu_suite.py --help)
#   VARIANTS='default;model.conv_formulation=matmul_1x1' benchmarks/gpu.sh   # JAX model variants
#
# Packages missing on the machine (e.g. ml_collections) are installed from the pure-Python wheels
# in .whl/ (`make wheels` fills it on a machine with a registry) into a temporary folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ -x .venv/bin/python && -z "${NO_VENV:-}" ]]; then PYTHON=.venv/bin/python; fi
if compgen -G ".whl/*.whl" > /dev/null; then
  site=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# JAX and torch share the process: JAX must not take most of the accelerator memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_CPP_MIN_LOG_LEVEL=2
args=(--out "${OUT:-benchmarks/results}" --steps "${STEPS:-20}")
if [[ -n "${SMALL:-}" ]]; then args+=(--small); fi
if [[ -n "${NO_TORCH:-}" ]]; then args+=(--no_torch); fi
if [[ -n "${CASES:-}" ]]; then args+=(--cases "$CASES"); fi
if [[ -n "${BATCHES:-}" ]]; then args+=(--batches "$BATCHES"); fi
if [[ -n "${VARIANTS:-}" ]]; then args+=(--variants "$VARIANTS"); fi
exec "$PYTHON" -m benchmarks.gpu_suite "${args[@]}"
