#!/usr/bin/env bash
# One prepared GPU check that fits 8 minutes on one H100-class GPU (the device tool's call limit is 10): the
# environment, then bench/gpu_throughput.py: a random Llama with Qwen3-0.6B's shapes and LoRA r=128 on all seven
# projections at initialisation (80.7 M adapter parameters), the paper's 500 samples of 128 tokens packed within
# the memory plan's token budget with the chunked LM head; the ratios packed/streamed and vmap/loop measured in
# the same run (with the peak memory of each pass), the whole adapter's λ_max certified, then per-module blocks
# scanned a few layers at a time for the time left, with blocks per minute and products per block.
#
#   bash bench/gpu_check.sh                 # on the GPU machine, from the repository root
#   SIZE=tiny bash bench/gpu_check.sh       # a CPU dry run of the same pipeline on tiny shapes (about a minute)
#
# Env: PYTHON (default: python), SIZE (qwen3 | tiny), MINUTES (the throughput script's own limit, default 6.5,
# checked between Lanczos steps and before each scan group), CHECK_TIMEOUT (hard limit in seconds, default 450),
# PACK_TOKENS (token slots a packed batch; default: the memory plan's budget, whose activation formula was fitted
# on the CPU: the log prints each pass's peak beside it).
# The earlier checks (bf16 training steps, HVP/gradient ratio, batched products, the streamed rehearsal) ran on an
# H200 on 2026-12-04; their log is bench/results/gpu_check_2026-12-04.log and each script still runs on its own.
# The project has no device env var: hessian_lora.inputs.models.default_device() takes CUDA whenever it is available.
set -euo pipefail

PYTHON=${PYTHON:-python}
SIZE=${SIZE:-qwen3}
MINUTES=${MINUTES:-6.5}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-450}
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

echo "== environment ($(date -u '+%Y-%m-%d %H:%M UTC'))"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
else
  echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
fi
"$PYTHON" - <<'PY'
import torch, transformers, peft
print(f"torch {torch.__version__}  cuda {torch.version.cuda}  available {torch.cuda.is_available()}  "
      f"transformers {transformers.__version__}  peft {peft.__version__}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
PY

echo "== the paper's Hessian in minutes (bench/gpu_throughput.py, SIZE=$SIZE, MINUTES=$MINUTES)"
rc=0
if [ "$SIZE" = "tiny" ]; then
  "$PYTHON" bench/gpu_throughput.py --tiny --threads 1 || rc=$?
else
  timeout "$CHECK_TIMEOUT" "$PYTHON" bench/gpu_throughput.py --minutes "$MINUTES" \
    ${PACK_TOKENS:+--pack-tokens "$PACK_TOKENS"} || rc=$?
fi
case $rc in
  0) echo "== gpu_check done: whole adapter certified" ;;
  3) echo "== gpu_check done: whole adapter NOT certified within the limit" ;;
  124) echo "== gpu_check: the throughput script passed CHECK_TIMEOUT=$CHECK_TIMEOUT s (rc=124)" ;;
  *) echo "== gpu_check failed (rc=$rc)"; exit "$rc" ;;
esac
