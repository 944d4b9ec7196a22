#!/usr/bin/env bash
# One call on a lent GPU machine (torch, triton, transformers preinstalled; no network):
# native kernel tests, CUDA runner tests, kernel re-timings, a server smoke test through the
# real openai client, and the engine workloads A/B/C. Logs and results go to $OUT.
# Carry: .whl (wheels of fastapi, uvicorn, pydantic, openai, ... fetched with `pip download`)
# and .bench (the llama3-8b-shape config.json plus tokenizer files).
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$(ls -d "$PWD"/packages/*/src | tr '\n' ':') PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
step() {
  local name=$1 limit=$2
  shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"
}
# SKIP=kernel-tests,kernel-bench leaves steps out; WORKLOADS picks the engine workloads (B,C,A:1 ...).
skip() { [[ ",${SKIP:-}," == *",$1,"* ]]; }
skip kernel-tests || step kernel-tests 170 python3 -m pytest -q -p no:cacheprovider -n 8 packages/kernels/tests
skip core-cuda-tests || step core-cuda-tests 120 python3 -m pytest -q -p no:cacheprovider packages/core/tests/test_model_runner_cuda.py
skip kernel-bench || step kernel-bench 80 python3 -m mono_llm.kernels.bench --only decode,bitmask --out "$OUT/kernels.json" --markdown "$OUT/kernels.md"
skip server-smoke || step server-smoke 100 python3 scripts/gpu_server_smoke.py .bench/llama3-8b-shape
skip engine-bench || step engine-bench 230 python3 -m mono_llm.core.bench --model .bench/llama3-8b-shape --load-format dummy --dtype bfloat16 --workload "${WORKLOADS:-B,C,A}" --json "$OUT/engine.json"
tail -n 3 "$OUT"/*tests.log
cat "$OUT/kernels.md" 2>/dev/null | tail -8
grep -v "^20" "$OUT/server-smoke.log" | grep -E "ready|models|completion|stream|burst|exited|Error|error" | tail -12
grep -E "^\|" "$OUT/engine-bench.log" | tail -6
cat "$OUT/summary.txt"
