#!/usr/bin/env bash
# Strong and weak scaling of small-dsv3 on this machine at 1, 2, 4, 8 ranks (attention DP, experts
# over all ranks), offline (load_generator --offline under mpirun: the engine alone) and served
# (moe-coordinator + mpirun moe-worker + load_generator). Strong: 16 sequences whatever the ranks;
# weak: 4 sequences per rank. Prompts of 64 tokens, 32 output tokens each.
# Writes CSV to stdout: mode,scaling,ranks,sequences,tokens_per_s
# Usage: run_engine_scaling.sh BUILD MODEL [RANKS...]
set -euo pipefail
BUILD=$1 MODEL=$2
shift 2
RANKS=("${@:-1 2 4 8}")
[[ $# -gt 0 ]] && RANKS=("$@") || RANKS=(1 2 4 8)
MPIRUN=(mpirun --oversubscribe --allow-run-as-root)
COMMON=(--prompt-len 64 --output-len 32 --vocab 32000)
PORT=50071
echo "mode,scaling,ranks,sequences,tokens_per_s"
tps() { grep -o '[0-9.]* output tokens/s' | cut -d' ' -f1; }
for r in "${RANKS[@]}"; do
  for scaling in strong weak; do
    n=16
    [[ $scaling == weak ]] && n=$((4 * r))
    t=$("${MPIRUN[@]}" -np "$r" "$BUILD/bench/load_generator" --offline --model "$MODEL" \
        --concurrency "$n" --requests "$n" "${COMMON[@]}" 2>/dev/null | tps)
    echo "offline,$scaling,$r,$n,$t"
    "$BUILD/coordinator/moe-coordinator" --model "$MODEL" --world-size "$r" --tp 1 \
      --listen "127.0.0.1:$PORT" --cluster-listen "127.0.0.1:$((PORT + 1))" --kv-cache-mb 256 \
      >/tmp/moe_scaling_coordinator.log 2>&1 &
    C=$!
    "${MPIRUN[@]}" -np "$r" "$BUILD/worker/moe-worker" --coordinator "127.0.0.1:$((PORT + 1))" \
      --model "$MODEL" >/tmp/moe_scaling_workers.log 2>&1 &
    WK=$!
    until "$BUILD/tools/moe-client" --server "127.0.0.1:$PORT" --health >/dev/null 2>&1; do
      sleep 0.5
    done
    t=$("$BUILD/bench/load_generator" --server "127.0.0.1:$PORT" --concurrency "$n" \
        --requests "$n" "${COMMON[@]}" | tps)
    echo "served,$scaling,$r,$n,$t"
    kill -TERM "$C"
    wait "$C" "$WK" || true
    PORT=$((PORT + 1))
  done
done
