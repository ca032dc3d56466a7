#!/bin/sh
# Starts this pod's worker ranks: rank = LWS_WORKER_INDEX x RANKS_PER_POD + i, GPU i when the pod
# has GPUs. Collectives go over TCP between pods (addresses registered with the coordinator);
# the control plane and the mesh are mutual TLS with the certificate in $CLUSTER_TLS_DIR (the
# moe-cluster-tls Secret).
# The pod ends (and LeaderWorkerSet restarts the group) as soon as one rank exits.
set -u
n=${RANKS_PER_POD:-1}
tls=${CLUSTER_TLS_DIR:-/etc/moe/cluster-tls}
pids=""
i=0
while [ "$i" -lt "$n" ]; do
  rank=$(( ${LWS_WORKER_INDEX:-0} * n + i ))
  CUDA_VISIBLE_DEVICES=$i moe-worker --coordinator "$COORDINATOR_ADDRESS" --model "$MODEL_DIR" \
    --rank "$rank" --world-size "$WORLD_SIZE" --host "$POD_IP" \
    --collective-listen "$POD_IP:$((29500 + i))" \
    --cluster-cert "$tls/tls.crt" --cluster-key "$tls/tls.key" --cluster-ca "$tls/ca.crt" &
  pids="$pids $!"
  i=$((i + 1))
done
# Stop at the first rank to exit, taking the others with it.
while :; do
  for p in $pids; do
    if ! kill -0 "$p" 2>/dev/null; then
      wait "$p"
      code=$?
      kill $pids 2>/dev/null
      exit "$code"
    fi
  done
  sleep 1
done
