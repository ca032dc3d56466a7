#!/usr/bin/env bash
# The main job on one machine: installs dependencies, builds, writes the default tiny model,
# starts a coordinator and 4 worker ranks (mpirun), streams a completion through moe-client, and
# shuts the cluster down with SIGTERM. Logs go to build/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=1
PORT=${MOE_DEMO_PORT:-50051}
WORKERS=${MOE_DEMO_WORKERS:-4}
MODEL=${MOE_MODEL_DIR:-models/tiny-dsv3}
LOGS=build/demo

say() { echo "demo: $*"; }

tools/install-deps.sh
say "building"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build
[[ -f $MODEL/config.json ]] || build/tools/moe-make-model --preset tiny-dsv3 --out "$MODEL"
mkdir -p "$LOGS"

MPIRUN=(mpirun --oversubscribe -np "$WORKERS")
[[ $(id -u) -eq 0 ]] && MPIRUN+=(--allow-run-as-root)

say "starting moe-coordinator on 127.0.0.1:$PORT (log: $LOGS/coordinator.log)"
build/coordinator/moe-coordinator --model "$MODEL" --world-size "$WORKERS" \
  --listen "127.0.0.1:$PORT" --metrics-port $((PORT + 1)) >"$LOGS/coordinator.log" 2>&1 &
COORDINATOR=$!
say "starting $WORKERS moe-worker ranks with mpirun (log: $LOGS/workers.log)"
"${MPIRUN[@]}" build/worker/moe-worker --coordinator "127.0.0.1:$PORT" --model "$MODEL" \
  >"$LOGS/workers.log" 2>&1 &
WORKERS_PID=$!
cleanup() { kill "$COORDINATOR" "$WORKERS_PID" 2>/dev/null || true; }
trap cleanup EXIT

for _ in $(seq 1 300); do
  build/tools/moe-client --server "127.0.0.1:$PORT" --health >/dev/null 2>&1 && break
  sleep 0.2
done
say "health: $(build/tools/moe-client --server "127.0.0.1:$PORT" --health || true)"
say "model: $(build/tools/moe-client --server "127.0.0.1:$PORT" --info | tr '\n' ' ' | cut -c1-160)..."
say "streaming a completion (prompt 1,2,3,4,5; 24 tokens, greedy):"
build/tools/moe-client --server "127.0.0.1:$PORT" --prompt-ids 1,2,3,4,5 --max-tokens 24 --ignore-eos
say "metrics: $(curl -s "http://127.0.0.1:$((PORT + 1))/metrics" | grep -E '^moe_generation_tokens_total')"

say "SIGTERM to the coordinator: drain, workers exit"
kill -TERM "$COORDINATOR"
wait "$COORDINATOR" && say "coordinator exited 0"
wait "$WORKERS_PID" && say "workers exited 0"
trap - EXIT
