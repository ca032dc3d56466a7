#!/usr/bin/env bash
# Served throughput against offline throughput at the same batch size, on small-dsv3 with one
# worker rank (both use every core), the same closed loop over the OpenAI-compatible HTTP API, then
# Poisson load for latency percentiles. MOE_BENCH_ONLY=grpc-http runs only the gRPC and HTTP loops.
# Usage: bench/run_serving_bench.sh [build-dir] [model-dir]
set -euo pipefail
BUILD=${1:-build}
MODEL=${2:-models/small-dsv3}
BATCH=${MOE_BENCH_BATCH:-8}
PORT=${MOE_BENCH_PORT:-50061}
[[ -f $MODEL/config.json ]] || "$BUILD/tools/moe-make-model" --preset small-dsv3 --dtype fp8 --out "$MODEL"
COMMON=(--requests 32 --prompt-len 64 --output-len 64 --vocab 32000)

[[ ${MOE_BENCH_ONLY:-} == grpc-http ]] ||
  "$BUILD/bench/load_generator" --offline --model "$MODEL" --concurrency "$BATCH" "${COMMON[@]}"

"$BUILD/coordinator/moe-coordinator" --model "$MODEL" --world-size 1 --listen "127.0.0.1:$PORT" \
  --cluster-listen "127.0.0.1:$((PORT + 1))" --http-listen "127.0.0.1:$((PORT + 2))" \
  --kv-cache-mb 512 --max-running "$BATCH" >/tmp/moe_bench_coordinator.log 2>&1 &
C=$!
"$BUILD/worker/moe-worker" --coordinator "127.0.0.1:$((PORT + 1))" --model "$MODEL" --rank 0 \
  --world-size 1 >/tmp/moe_bench_worker.log 2>&1 &
W=$!
trap 'kill $C $W 2>/dev/null || true' EXIT
until "$BUILD/tools/moe-client" --server "127.0.0.1:$PORT" --health >/dev/null 2>&1; do sleep 0.5; done
"$BUILD/bench/load_generator" --server "127.0.0.1:$PORT" --concurrency "$BATCH" "${COMMON[@]}"
"$BUILD/bench/load_generator" --http "127.0.0.1:$((PORT + 2))" --concurrency "$BATCH" "${COMMON[@]}"
[[ ${MOE_BENCH_ONLY:-} == grpc-http ]] ||
  "$BUILD/bench/load_generator" --server "127.0.0.1:$PORT" --rate 0.5 "${COMMON[@]}"
kill -TERM $C
wait $C $W || true
