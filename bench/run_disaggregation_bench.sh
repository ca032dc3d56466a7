#!/usr/bin/env bash
# Prefill/decode disaggregation, measured: time to first token and inter-token latency of a mixed
# load — most prompts short, every --long-every-th one long — served colocated (the workers
# prefill and decode in the same steps: a long prompt's chunks stall every decoding stream) and
# disaggregated (a main worker group prefills, a decode group decodes from the KV sent to it).
# On one machine the layouts get the same cores:
#   colocated-1   one worker rank with every core
#   colocated-2   two worker ranks (DP attention + EP), a core each
#   disaggregated one main-group rank and one decode-group rank, a core each
# Usage: bench/run_disaggregation_bench.sh [build-dir] [model-dir]
#   env LOAD_ARGS (load_generator flags), COORD_ARGS (more moe-coordinator flags, e.g.
#   --max-batch-tokens 128: smaller prefill chunks), MOE_BENCH_PORT
set -euo pipefail
BUILD=${1:-build}
MODEL=${2:-models/small-dsv3-fp8}
PORT=${MOE_BENCH_PORT:-50081}
[[ -f $MODEL/config.json ]] || "$BUILD/tools/moe-make-model" --preset small-dsv3 --dtype fp8 --out "$MODEL"
read -r -a COORD <<<"${COORD_ARGS:-}"
read -r -a LOAD <<<"${LOAD_ARGS:---requests 36 --concurrency 6 --prompt-len 32 --long-every 6 --long-prompt-len 1024 --output-len 32}"
CORES=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
PIDS=()
LOGS=/tmp/moe_disagg_bench
mkdir -p "$LOGS"

worker() {  # worker LOG [moe-worker flags...]
  local log=$1
  shift
  "$BUILD/worker/moe-worker" --coordinator "127.0.0.1:$((PORT + 1))" --model "$MODEL" \
    --host 127.0.0.1 "$@" >"$LOGS/$log" 2>&1 &
  PIDS+=($!)
}
serve() {  # serve LAYOUT
  local extra=()
  [[ $1 == disaggregated ]] && extra=(--decode-world-size 1)
  local world=1
  [[ $1 == colocated-2 ]] && world=2
  "$BUILD/coordinator/moe-coordinator" --model "$MODEL" --world-size "$world" --tp 1 \
    --listen "127.0.0.1:$PORT" --cluster-listen "127.0.0.1:$((PORT + 1))" \
    --metrics-port "$((PORT + 2))" --kv-cache-mb 1024 "${extra[@]}" "${COORD[@]}" >"$LOGS/coordinator.log" 2>&1 &
  PIDS+=($!)
  case $1 in
    colocated-1) worker w0.log --rank 0 --world-size 1 --threads "$CORES" ;;
    colocated-2)
      for r in 0 1; do worker "w$r.log" --rank "$r" --world-size 2 --threads $((CORES / 2)); done ;;
    disaggregated)
      worker w0.log --rank 0 --world-size 1 --threads $((CORES / 2))
      worker d0.log --rank 0 --world-size 1 --threads $((CORES / 2)) --group decode \
        --kv-listen 127.0.0.1:0 ;;
  esac
  until "$BUILD/tools/moe-client" --server "127.0.0.1:$PORT" --health >/dev/null 2>&1; do sleep 0.5; done
}
stop() {
  kill -TERM "${PIDS[0]}"
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
}
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

for layout in colocated-1 colocated-2 disaggregated; do
  echo "=== $layout"
  serve "$layout"
  # One request first: every page of the weights read in before the clock starts.
  "$BUILD/tools/moe-client" --server "127.0.0.1:$PORT" --prompt-ids 1,2,3 --max-tokens 4 >/dev/null 2>&1
  "$BUILD/bench/load_generator" --server "127.0.0.1:$PORT" --vocab 32000 "${LOAD[@]}"
  if [[ $layout == disaggregated ]]; then
    curl -fsS "http://127.0.0.1:$((PORT + 2))/metrics" | awk '
      /^moe_kv_transfers_total / {n = $2} /^moe_kv_transfer_bytes_total / {b = $2}
      END {printf "  KV transfers: %d, %.1f MB (%.2f MB a prompt)\n", n, b / 1e6, n ? b / 1e6 / n : 0}'
  fi
  stop
done
