#!/usr/bin/env bash
# The main job on one machine: installs dependencies, builds, writes the default tiny model (with
# its tokenizer and chat template), starts a coordinator and 4 worker ranks (mpirun), streams a
# completion of a text prompt, an answer to a chat message and a completion of token ids through
# moe-client, and shuts the cluster down with SIGTERM. Logs go to build/demo/. Any step that fails fails the
# command (with the logs' last lines); each step prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=1
source tools/steps.sh
PORT=${MOE_DEMO_PORT:-50051}
WORKERS=${MOE_DEMO_WORKERS:-4}
MODEL=${MOE_MODEL_DIR:-models/tiny-dsv3}
LOGS=build/demo

say() { echo "demo: $*"; }
fail() {
  echo "demo: FAILED: $*"
  for log in "$LOGS"/coordinator.log "$LOGS"/workers.log; do
    [[ -f $log ]] && { echo "--- last lines of $log"; tail -n 20 "$log"; }
  done
  exit 1
}

step "dependencies (Debian packages, Python venv in .venv)"
tools/install-deps.sh
step "build (the binaries the demo runs)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target moe-coordinator moe-worker moe-client moe-make-model
step "model: $MODEL"
if [[ -f $MODEL/config.json ]]; then say "$MODEL exists"; else
  build/tools/moe-make-model --preset tiny-dsv3 --out "$MODEL"; fi
if [[ ! -f $MODEL/tokenizer.json && ! -f $MODEL/tiktoken.model ]]; then
  say "$MODEL has no tokenizer (made by an older moe-make-model): writing it"
  build/tools/moe-make-model --preset tiny-dsv3 --tokenizer-only --out "$MODEL"
fi
mkdir -p "$LOGS"

MPIRUN=(mpirun --oversubscribe -np "$WORKERS")
[[ $(id -u) -eq 0 ]] && MPIRUN+=(--allow-run-as-root)

step "cluster: coordinator + $WORKERS workers"
say "starting moe-coordinator on 127.0.0.1:$PORT (log: $LOGS/coordinator.log)"
build/coordinator/moe-coordinator --model "$MODEL" --world-size "$WORKERS" \
  --listen "127.0.0.1:$PORT" --cluster-listen "127.0.0.1:$((PORT + 2))" --metrics-port $((PORT + 1)) \
  >"$LOGS/coordinator.log" 2>&1 &
COORDINATOR=$!
say "starting $WORKERS moe-worker ranks with mpirun (log: $LOGS/workers.log)"
"${MPIRUN[@]}" build/worker/moe-worker --coordinator "127.0.0.1:$((PORT + 2))" --model "$MODEL" \
  >"$LOGS/workers.log" 2>&1 &
WORKERS_PID=$!
cleanup() { kill "$COORDINATOR" "$WORKERS_PID" 2>/dev/null || true; }
trap cleanup EXIT

serving=0
for _ in $(seq 1 300); do
  build/tools/moe-client --server "127.0.0.1:$PORT" --health >/dev/null 2>&1 && { serving=1; break; }
  kill -0 "$COORDINATOR" 2>/dev/null || fail "moe-coordinator exited during startup"
  sleep 0.2
done
[[ $serving -eq 1 ]] || fail "the cluster did not report SERVING within 60 s"
health=$(build/tools/moe-client --server "127.0.0.1:$PORT" --health) || fail "moe-client --health"
say "health: $health"
info=$(build/tools/moe-client --server "127.0.0.1:$PORT" --info) || fail "moe-client --info"
say "model: $(tr '\n' ' ' <<<"$info" | cut -c1-160)..."

step "request: a text prompt; 24 tokens, greedy (random weights: the answer is random words)"
say "prompt: The capital of France is"
answer=$(build/tools/moe-client --server "127.0.0.1:$PORT" --prompt "The capital of France is" \
  --max-tokens 24 --ignore-eos) || fail "the text completion request"
say "answer: $answer"
step "request: a chat message (the model's chat template makes the prompt); 24 tokens, greedy"
say "user: What is the capital of France?"
answer=$(build/tools/moe-client --server "127.0.0.1:$PORT" --system "You are terse." \
  --chat "What is the capital of France?" --max-tokens 24 --ignore-eos) || fail "the chat request"
say "assistant: $answer"
step "request: prompt ids 1,2,3,4,5; 24 tokens, greedy"
build/tools/moe-client --server "127.0.0.1:$PORT" --prompt-ids 1,2,3,4,5 --max-tokens 24 --ignore-eos ||
  fail "the completion request"
metrics=$(curl -fsS "http://127.0.0.1:$((PORT + 1))/metrics") || fail "GET /metrics"
tokens=$(grep -E '^moe_generation_tokens_total' <<<"$metrics") || fail "/metrics has no moe_generation_tokens_total"
say "metrics: $tokens"

step "shutdown: SIGTERM to the coordinator, which drains and tells the workers to exit"
kill -TERM "$COORDINATOR"
wait "$COORDINATOR" || fail "moe-coordinator exited $?"
say "coordinator exited 0"
wait "$WORKERS_PID" || fail "the workers exited $?"
say "workers exited 0"
trap - EXIT
steps_summary
