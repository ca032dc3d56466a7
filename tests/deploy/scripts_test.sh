#!/usr/bin/env bash
# The deployment shell scripts, without a cluster:
#   deploy/k8s/base/pod-ranks.sh starts RANKS_PER_POD ranks numbered from LWS_WORKER_INDEX, one GPU
#   and one collective port each, with the cluster certificate (mutual TLS), and ends with the
#   first rank's exit code;
#   deploy/mpi/launch.sh --dry-run derives the world size and the coordinator from a hostfile.
# Usage: scripts_test.sh SOURCE_DIR
set -uo pipefail
SRC=$(cd "$1" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "scripts-test: FAILED: $*"; exit 1; }

# A fake moe-worker: records its rank, GPU and arguments; rank 4 exits with 3 after a moment.
mkdir -p "$T/bin"
cat > "$T/bin/moe-worker" <<'FAKE'
#!/bin/sh
rank="" tls=""
while [ $# -gt 0 ]; do
  [ "$1" = "--rank" ] && rank=$2
  case "$1" in --cluster-cert|--cluster-key|--cluster-ca) tls="$tls $1=$2" ;; esac
  shift
done
echo "rank=$rank gpu=$CUDA_VISIBLE_DEVICES tls=$tls" >> "$RECORD"
if [ "$rank" = "4" ]; then sleep 1; exit 3; fi
sleep 30
FAKE
chmod +x "$T/bin/moe-worker"
export RECORD=$T/record PATH=$T/bin:$PATH
start=$(date +%s)
LWS_WORKER_INDEX=1 RANKS_PER_POD=3 WORLD_SIZE=6 COORDINATOR_ADDRESS=c:1 MODEL_DIR=/m POD_IP=10.0.0.9 \
  sh "$SRC/deploy/k8s/base/pod-ranks.sh"
code=$?
[[ $code -eq 3 ]] || fail "pod-ranks.sh exited $code, expected the failing rank's 3"
(( $(date +%s) - start < 10 )) || fail "pod-ranks.sh did not stop at the first exit"
sort "$T/record" > "$T/sorted"
TLS=" --cluster-cert=/etc/moe/cluster-tls/tls.crt --cluster-key=/etc/moe/cluster-tls/tls.key --cluster-ca=/etc/moe/cluster-tls/ca.crt"
printf "rank=3 gpu=0 tls=%s\nrank=4 gpu=1 tls=%s\nrank=5 gpu=2 tls=%s\n" "$TLS" "$TLS" "$TLS" |
  diff - "$T/sorted" || fail "wrong ranks, GPUs or certificates"
pgrep -f "$T/bin/moe-worker" >/dev/null && fail "ranks left running"
echo "scripts-test: pod-ranks.sh ok"

printf "# two nodes\nnode-a slots=8\nnode-b slots=8\n" > "$T/hosts"
out=$("$SRC/deploy/mpi/launch.sh" --hostfile "$T/hosts" --model /models/m --tp 8 --dry-run)
grep -q "16 ranks (TP 8) over 2 host(s); coordinator control plane node-a:50052, public API port 50051" <<< "$out" || fail "launch.sh: $out"
grep -q "mpirun -np 16 --hostfile $T/hosts" <<< "$out" || fail "launch.sh mpirun: $out"
grep -q "moe-coordinator --model /models/m --world-size 16 --tp 8" <<< "$out" || fail "launch.sh coordinator: $out"
grep -q "rank-env.sh .*moe-worker --coordinator node-a:50052 --model /models/m" <<< "$out" || fail "launch.sh worker: $out"
grep -q "moe-coordinator .*--listen 0.0.0.0:50051 --cluster-listen 0.0.0.0:50052" <<< "$out" || fail "launch.sh coordinator: $out"
out=$(MOE_IFACE=eth1 "$SRC/deploy/mpi/launch.sh" --hostfile "$T/hosts" --model /m --dry-run)
grep -q -- "--mca btl_tcp_if_include eth1 --mca oob_tcp_if_include eth1" <<< "$out" || fail "launch.sh MOE_IFACE: $out"
out=$("$SRC/deploy/mpi/launch.sh" --hostfile "$T/hosts" --model /m --cluster-tls /tls --dry-run)
want="--cluster-cert /tls/cluster.pem --cluster-key /tls/cluster.key --cluster-ca /tls/cluster-ca.pem"
[[ $(grep -c -- "$want" <<< "$out") -eq 2 ]] || fail "launch.sh --cluster-tls (coordinator and workers): $out"
# A decode group (prefill/decode disaggregation) from a second hostfile.
printf "node-c slots=8\nnode-d slots=4\n" > "$T/decode-hosts"
out=$("$SRC/deploy/mpi/launch.sh" --hostfile "$T/hosts" --model /m --tp 8 --decode-hostfile "$T/decode-hosts" --decode-tp 4 --dry-run)
grep -q "a decode group of 12 ranks (TP 4)" <<< "$out" || fail "launch.sh decode group: $out"
grep -q "moe-coordinator --model /m --world-size 16 --tp 8 --decode-world-size 12 --decode-tp 4" <<< "$out" || fail "launch.sh decode coordinator: $out"
grep -q "^decode: *mpirun -np 12 --hostfile $T/decode-hosts .*moe-worker --coordinator node-a:50052 --model /m --group decode --kv-listen 0.0.0.0:0" <<< "$out" || fail "launch.sh decode workers: $out"
grep -q "^workers: .*--group decode" <<< "$out" && fail "launch.sh: the main group joined the decode group: $out"
"$SRC/deploy/mpi/launch.sh" --hostfile "$T/hosts" --model /m --decode-hostfile "$T/none" --dry-run >/dev/null 2>&1 && fail "launch.sh accepted a missing --decode-hostfile"
"$SRC/deploy/mpi/launch.sh" --model /m >/dev/null 2>&1 && fail "launch.sh accepted a missing --hostfile"
echo "scripts-test: launch.sh ok"
# rank-env.sh: local rank i gets GPU i.
[[ $(OMPI_COMM_WORLD_LOCAL_RANK=5 "$SRC/deploy/mpi/rank-env.sh" sh -c 'echo $CUDA_VISIBLE_DEVICES') == 5 ]] ||
  fail "rank-env.sh did not set CUDA_VISIBLE_DEVICES"
echo "scripts-test: PASSED"
