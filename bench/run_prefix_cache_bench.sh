#!/usr/bin/env bash
# Prefix caching, measured: TTFT and throughput of two workloads served with and without the
# cache (--no-prefix-cache), on small-dsv3 with one worker rank, over gRPC, plus the cache's hit
# rate from /metrics:
#   shared system prompt  every prompt is 448 shared tokens (7 blocks of 64) + 64 of its own
#   multi-turn chat       6 conversations of 4 turns; each turn's prompt is the last one's + 128
# Usage: bench/run_prefix_cache_bench.sh [build-dir] [model-dir]
set -euo pipefail
BUILD=${1:-build}
MODEL=${2:-models/small-dsv3}
PORT=${MOE_BENCH_PORT:-50071}
[[ -f $MODEL/config.json ]] || "$BUILD/tools/moe-make-model" --preset small-dsv3 --dtype fp8 --out "$MODEL"
COMMON=(--output-len 16 --requests 24 --concurrency 4 --vocab 32000)

serve() {  # serve [coordinator flags...]
  "$BUILD/coordinator/moe-coordinator" --model "$MODEL" --world-size 1 --listen "127.0.0.1:$PORT" \
    --cluster-listen "127.0.0.1:$((PORT + 1))" --metrics-port "$((PORT + 2))" --kv-cache-mb 1024 \
    --max-running 4 "$@" >/tmp/moe_prefix_bench_coordinator.log 2>&1 &
  C=$!
  "$BUILD/worker/moe-worker" --coordinator "127.0.0.1:$((PORT + 1))" --model "$MODEL" --rank 0 \
    --world-size 1 >/tmp/moe_prefix_bench_worker.log 2>&1 &
  W=$!
  until "$BUILD/tools/moe-client" --server "127.0.0.1:$PORT" --health >/dev/null 2>&1; do sleep 0.5; done
}
stop() {
  kill -TERM "$C"
  wait "$C" "$W" || true
}
hit_rate() {
  curl -fsS "http://127.0.0.1:$((PORT + 2))/metrics" | awk '
    /^moe_prefix_cache_queries_total / {q = $2} /^moe_prefix_cache_hits_total / {h = $2}
    /^moe_prefix_cache_evictions_total / {e = $2}
    END {printf "  prefix cache: %d of %d prompt tokens found cached (%.0f%%), %d evictions\n", h, q, q ? 100 * h / q : 0, e}'
}
trap 'kill $C $W 2>/dev/null || true' EXIT
for mode in on off; do
  flags=()
  [[ $mode == off ]] && flags=(--no-prefix-cache)
  echo "=== prefix cache $mode"
  serve "${flags[@]}"
  echo "--- shared system prompt"
  "$BUILD/bench/load_generator" --server "127.0.0.1:$PORT" --prompt-len 512 --shared-prefix 448 "${COMMON[@]}"
  [[ $mode == on ]] && hit_rate
  stop
  serve "${flags[@]}"
  echo "--- multi-turn chat"
  "$BUILD/bench/load_generator" --server "127.0.0.1:$PORT" --prompt-len 128 --turns 4 "${COMMON[@]}"
  [[ $mode == on ]] && hit_rate
  stop
done
