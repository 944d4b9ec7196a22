#!/usr/bin/env bash
# One call on a lent GPU machine: `mono-llm serve` on the Llama-3-8B shape (dummy bf16 weights)
# under the peers' HTTP script (two passes, step trace on), then the offline workloads and the
# bfloat16 greedy-token noise floor. Results and logs go to $OUT (at most 8 files come back,
# so the logs travel as one tarball).
#
#   bash scripts/gpu_serve_perf.sh SERVE_BENCH_PY [extra serve flags...]
#
# Carry: .whl (the server's wheels), .bench/llama3-8b-shape (config.json), and the folder of
# SERVE_BENCH_PY. WORKLOADS (default B,C,A) picks the offline workloads; SKIP=offline,tokens
# leaves steps out. EXTRA_PYTHONPATH goes in front of the server's path only (a sitecustomize
# probe, say) and the files it leaves in PROBE_DIR travel with the logs.
set -u
bench_script=$1
shift
OUT=${OUT:-gpu-results}
LOGS=/tmp/perf-logs
mkdir -p "$OUT" "$LOGS"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$(ls -d "$PWD"/packages/*/src | tr '\n' ':') PYTHONUNBUFFERED=1
nvidia-smi -L
skip() { [[ ",${SKIP:-}," == *",$1,"* ]]; }
elapsed() { echo "$1 rc=$2 $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"; }

# The model folder: the 8B shape's config.json with the tiny-llama fixture's tokenizer files.
model=/tmp/llama3-8b-shape
mkdir -p "$model"
cp .bench/llama3-8b-shape/config.json "$model/"
python3 - "$model" <<'EOF'
import shutil, sys
from pathlib import Path
from mono_llm.core.testing import fixture_path
src = fixture_path("tiny-llama")
for f in src.iterdir():
    if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "generation_config.json":
        shutil.copy(f, Path(sys.argv[1]) / f.name)
EOF

start=$(date +%s)
MONO_LLM_STEP_TRACE=$LOGS/step-trace.jsonl PYTHONPATH=${EXTRA_PYTHONPATH:+$EXTRA_PYTHONPATH:}$PYTHONPATH \
  setsid python3 -m mono_llm.openai_api.cli serve "$model" \
  --served-model-name bench --load-format dummy --dtype bfloat16 --port 8013 --max-model-len 4096 \
  "$@" > "$LOGS/serve.log" 2>&1 &
server=$!
for pass in pass1 pass2; do
  timeout 300 python3 "$bench_script" http://127.0.0.1:8013 bench "$pass" | grep RESULT | tee -a "$OUT/summary.txt"
done
python3 -m mono_llm.openai_api.cli bench serve --base-url http://127.0.0.1:8013 --model bench \
  --num-prompts 3 --max-concurrency 1 --random-input-len 128 --random-output-len 256 \
  --output-json "$LOGS/bench-serve-single.json" > "$LOGS/bench-serve-single.log" 2>&1
grep -iE "itl|inter" "$LOGS/bench-serve-single.log" | head -6 | tee -a "$OUT/summary.txt"
kill -TERM -$server 2>/dev/null
wait $server
elapsed serve $?
[ -n "${PROBE_DIR:-}" ] && cp -r "$PROBE_DIR" "$LOGS/probe" && cat "$LOGS"/probe/* | cut -c1-400
if [ -f "$LOGS/step-trace.jsonl" ]; then
  python3 scripts/step_trace_summary.py "$LOGS/step-trace.jsonl" > "$LOGS/step-trace-summary.txt" 2>&1
  tail -n 40 "$LOGS/step-trace-summary.txt"
fi

if ! skip offline; then
  start=$(date +%s)
  timeout 330 python3 -m mono_llm.core.bench --model .bench/llama3-8b-shape --load-format dummy \
    --dtype bfloat16 --workload "${WORKLOADS:-B,C,A}" --json "$OUT/engine.json" > "$LOGS/engine.log" 2>&1
  elapsed offline $?
  grep -E "^\|" "$LOGS/engine.log" | tail -5 | tee -a "$OUT/summary.txt"
fi

if ! skip tokens; then
  start=$(date +%s)
  for seqs in 16 1; do
    timeout 120 python3 scripts/bench_parallel.py --child-tokens .bench/llama3-8b-shape bfloat16 1 \
      "$LOGS/tokens-tp1-seqs$seqs.json" "$seqs" > "$LOGS/tokens-tp1-seqs$seqs.log" 2>&1
  done
  elapsed tokens $?
fi
tar czf "$OUT/logs.tgz" -C /tmp perf-logs
cat "$OUT/summary.txt"
