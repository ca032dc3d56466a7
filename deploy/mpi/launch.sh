#!/usr/bin/env bash
# Launches a serving cluster over the hosts of an Open MPI hostfile: moe-coordinator on this host
# (run the script on the first host of the file), one moe-worker rank per GPU (or per slot on CPU
# hosts) across all hosts through mpirun. Ctrl-C / SIGTERM drains and stops everything.
#
#   deploy/mpi/launch.sh --hostfile hosts --model /models/DeepSeek-V3 [--tp 8] [--port 50051]
#                        [--cluster-port 50052] [--cluster-tls DIR]
#                        [--decode-hostfile decode-hosts [--decode-tp 1]]
# --port is the public API; the workers reach the control plane on --cluster-port of the first
# host (MOE_COORDINATOR_ADDRESS overrides that address): keep it off the public network.
# --cluster-tls DIR makes the control plane mutual TLS with DIR/cluster.pem, cluster.key and
# cluster-ca.pem (deploy/tls/make-test-certs.sh's names; the certificate must name the first
# host). MPI's own transport between the ranks stays unencrypted.
# --decode-hostfile adds a decode worker group on those hosts (prefill/decode disaggregation: the
# --hostfile ranks then only prefill, and each prompt's KV goes to a decode rank, which listens
# for it on a port of its host: open those between the two groups' hosts).
#
# hostfile (Open MPI syntax), e.g. two nodes of eight GPUs:
#   node-a slots=8
#   node-b slots=8
#
# What a real cluster needs (set in the environment before running; forwarded with -x):
#   NCCL_SOCKET_IFNAME=eth0      interface NCCL bootstraps over (and its data path without IB)
#   NCCL_IB_HCA=mlx5_0,mlx5_1    the InfiniBand/RoCE adapters NCCL may use
#   MOE_IFACE=eth0 (or a CIDR)   interface for Open MPI's TCP traffic (btl_tcp / oob_tcp)
#   CUDA_VISIBLE_DEVICES         set per rank by rank-env.sh: local rank i gets GPU i
# The model folder must be at the same path on every host (shared filesystem or a copy).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${MOE_BIN:-$HERE/../../build}
HOSTFILE="" MODEL="" TP=0 PORT=50051 CLUSTER_PORT=50052 METRICS_PORT=9090 DRY_RUN=0 EXTRA=() TLS=()
DECODE_HOSTFILE="" DECODE_TP=0
usage() { sed -n '2,27p' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --hostfile) HOSTFILE=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --tp) TP=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --cluster-port) CLUSTER_PORT=$2; shift 2 ;;
    --metrics-port) METRICS_PORT=$2; shift 2 ;;
    --cluster-tls) TLS=(--cluster-cert "$2/cluster.pem" --cluster-key "$2/cluster.key"
                        --cluster-ca "$2/cluster-ca.pem"); shift 2 ;;
    --decode-hostfile) DECODE_HOSTFILE=$2; shift 2 ;;
    --decode-tp) DECODE_TP=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --help|-h) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "launch.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[[ -n $HOSTFILE && -n $MODEL ]] || { echo "launch.sh: --hostfile and --model are required" >&2; usage 2; }
[[ -r $HOSTFILE ]] || { echo "launch.sh: no hostfile $HOSTFILE" >&2; exit 2; }
# World size: the slots of the hostfile.
slots() { awk '!/^#/ && NF { s = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); s = a[2] } n += s } END { print n }' "$1"; }
WORLD=$(slots "$HOSTFILE")
FIRST=$(awk '!/^#/ && NF { print $1; exit }' "$HOSTFILE")
HOSTS=$(awk '!/^#/ && NF { n++ } END { print n + 0 }' "$HOSTFILE")
DECODE_WORLD=0
if [[ -n $DECODE_HOSTFILE ]]; then
  [[ -r $DECODE_HOSTFILE ]] || { echo "launch.sh: no decode hostfile $DECODE_HOSTFILE" >&2; exit 2; }
  DECODE_WORLD=$(slots "$DECODE_HOSTFILE")
  [[ $DECODE_TP -gt 0 ]] || DECODE_TP=$DECODE_WORLD
fi
COORDINATOR=${MOE_COORDINATOR_ADDRESS:-$FIRST:$CLUSTER_PORT}
[[ $TP -gt 0 ]] || TP=$WORLD

mpirun_for() {  # mpirun_for NP HOSTFILE: the mpirun command line into MPIRUN
  MPIRUN=(mpirun -np "$1" --hostfile "$2" --map-by slot --bind-to none)
  for var in PATH LD_LIBRARY_PATH NCCL_SOCKET_IFNAME NCCL_IB_HCA NCCL_DEBUG; do
    [[ -n ${!var:-} ]] && MPIRUN+=(-x "$var")
  done
  if [[ -n ${MOE_IFACE:-} ]]; then
    MPIRUN+=(--mca btl_tcp_if_include "$MOE_IFACE" --mca oob_tcp_if_include "$MOE_IFACE")
  fi
  [[ $(id -u) -eq 0 ]] && MPIRUN+=(--allow-run-as-root)
  MPIRUN+=(${MOE_MPIRUN_ARGS:-})
}
WORKER=("$HERE/rank-env.sh" "$BIN/worker/moe-worker" --coordinator "$COORDINATOR" --model "$MODEL"
  "${TLS[@]}" "${EXTRA[@]}")
DECODE=()
[[ $DECODE_WORLD -gt 0 ]] && DECODE=(--decode-world-size "$DECODE_WORLD" --decode-tp "$DECODE_TP")
CO=("$BIN/coordinator/moe-coordinator" --model "$MODEL" --world-size "$WORLD" --tp "$TP"
  "${DECODE[@]}" --listen "0.0.0.0:$PORT" --cluster-listen "0.0.0.0:$CLUSTER_PORT"
  --metrics-port "$METRICS_PORT" "${TLS[@]}" ${MOE_COORDINATOR_ARGS:-})

echo "launch.sh: $WORLD ranks (TP $TP) over $HOSTS host(s); coordinator control plane $COORDINATOR, public API port $PORT"
mpirun_for "$WORLD" "$HOSTFILE"
MAIN_MPIRUN=("${MPIRUN[@]}")
DECODE_MPIRUN=()
if [[ $DECODE_WORLD -gt 0 ]]; then
  echo "launch.sh: a decode group of $DECODE_WORLD ranks (TP $DECODE_TP) from $DECODE_HOSTFILE; the $WORLD ranks above prefill"
  mpirun_for "$DECODE_WORLD" "$DECODE_HOSTFILE"
  DECODE_MPIRUN=("${MPIRUN[@]}" "${WORKER[@]}" --group decode --kv-listen 0.0.0.0:0)
fi
if [[ $DRY_RUN -eq 1 ]]; then
  echo "coordinator: ${CO[*]}"
  echo "workers:     ${MAIN_MPIRUN[*]} ${WORKER[*]}"
  [[ $DECODE_WORLD -gt 0 ]] && echo "decode:      ${DECODE_MPIRUN[*]}"
  exit 0
fi
"${CO[@]}" &
CO_PID=$!
"${MAIN_MPIRUN[@]}" "${WORKER[@]}" &
MPI_PIDS=($!)
if [[ $DECODE_WORLD -gt 0 ]]; then
  "${DECODE_MPIRUN[@]}" &
  MPI_PIDS+=($!)
fi
trap 'kill -TERM $CO_PID 2>/dev/null; wait $CO_PID; wait "${MPI_PIDS[@]}"' INT TERM
wait -n $CO_PID "${MPI_PIDS[@]}" || true
kill -TERM $CO_PID 2>/dev/null || true
wait $CO_PID || true
wait "${MPI_PIDS[@]}" || true
