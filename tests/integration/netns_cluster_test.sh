#!/usr/bin/env bash
# Emulated multi-node cluster: three "hosts" (network namespaces with their own addresses, joined
# by veth pairs to a bridge in a fourth, "switch" namespace). The coordinator runs on host 0; four
# worker ranks run on hosts 1 and 2, launched by mpirun through deploy/mpi/netns-agent.sh (its
# "ssh" enters the namespace). Checks:
#   1. a generation equals the single-rank moe-generate output;
#   2. cutting host 2's link: health turns NOT_SERVING and the in-flight request fails with
#      UNAVAILABLE within MAX_DETECT_S seconds (heartbeat timeout 3 s + a step);
#   3. relaunching the workers (link restored): SERVING again and the same output, with the same
#      coordinator process;
#   4. a worker<->worker partition (hosts 1 and 2 lose each other, both still reach host 0, so
#      every rank's heartbeats go on while its step is stuck in a collective): the step deadline
#      fails the cluster, the in-flight request fails with UNAVAILABLE within MAX_DETECT_S seconds,
#      health turns NOT_SERVING; after a relaunch the cluster serves again.
# Needs root (namespaces); exits 77 (skipped) with a message otherwise. Always removes what it made.
# Usage: netns_cluster_test.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
MAX_DETECT_S=10
TAG=moe$$
SW=${TAG}sw
HOSTS=(${TAG}h0 ${TAG}h1 ${TAG}h2)
ADDR=(10.77.0.1 10.77.0.2 10.77.0.3)
WORK=$(mktemp -d)
PORT=50051
COORD=${ADDR[0]}:$PORT                # the public API (clients)
CONTROL=${ADDR[0]}:$((PORT + 1))      # the control plane (--cluster-listen: workers)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

log() { echo "netns-test: $*"; }
skip() { log "SKIPPED: $*"; exit 77; }
fail() {
  log "FAILED: $*"
  for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done
  exit 1
}

cleanup() {
  for ns in "${HOSTS[@]}" "$SW"; do
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
      pids=$(ip netns pids "$ns" 2>/dev/null)
      [[ -n $pids ]] && kill -9 $pids 2>/dev/null
      ip netns del "$ns" 2>/dev/null
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces"
command -v ip >/dev/null && command -v unshare >/dev/null && command -v nsenter >/dev/null ||
  skip "needs iproute2, unshare and nsenter"
ip netns add "$SW" 2>/dev/null || skip "cannot create network namespaces here"
# Commands enter a namespace with nsenter (which execs the command: $! is its pid), not with
# `ip netns exec`, which remounts / and /sys and so fails where the root is not a mount point.
nsenter --net="/run/netns/$SW" ip link add br0 type bridge || skip "cannot create a bridge"
nsenter --net="/run/netns/$SW" ip link set br0 up
for i in 0 1 2; do
  h=${HOSTS[$i]}
  ip netns add "$h"
  ip link add eth0 netns "$h" type veth peer name "p$i" netns "$SW"
  nsenter --net="/run/netns/$h" ip addr add "${ADDR[$i]}/24" dev eth0
  nsenter --net="/run/netns/$h" ip link set eth0 up
  nsenter --net="/run/netns/$h" ip link set lo up
  nsenter --net="/run/netns/$SW" ip link set "p$i" master br0
  nsenter --net="/run/netns/$SW" ip link set "p$i" up
done
nsenter --net="/run/netns/${HOSTS[1]}" ping -c1 -W2 "${ADDR[2]}" >/dev/null || fail "hosts cannot reach each other"
log "hosts ${HOSTS[*]} at ${ADDR[*]}"

MODEL=$WORK/tiny-dsv3
"$BUILD/tools/moe-make-model" --preset tiny-dsv3 --dtype f32 --seed 3 --out "$MODEL" 2>/dev/null
PROMPT=5,17,42,99,7,1,250,33
WANT=$("$BUILD/tools/moe-generate" --model "$MODEL" --prompt-ids $PROMPT --max-new-tokens 24 --ignore-eos 2>/dev/null)
client() { nsenter --net="/run/netns/${HOSTS[0]}" "$BUILD/tools/moe-client" --server "$COORD" "$@"; }
wait_health() {  # wait_health STATUS SECONDS
  for _ in $(seq 1 $(( $2 * 10 ))); do
    [[ $(client --health 2>/dev/null) == "$1" ]] && return 0
    sleep 0.1
  done
  return 1
}
# Waits until every host reaches every other (a restored link or route can take a moment to pass
# traffic; a launch before that leaves mpirun waiting on a daemon that never started).
wait_reachable() {
  for _ in $(seq 1 100); do
    local ok=1
    for i in 0 1 2; do
      for j in 0 1 2; do
        [[ $i == "$j" ]] && continue
        nsenter --net="/run/netns/${HOSTS[$i]}" ping -c1 -W1 "${ADDR[$j]}" >/dev/null 2>&1 || ok=0
      done
    done
    (( ok )) && return 0
    sleep 0.1
  done
  fail "hosts do not reach each other again"
}
launch_workers() {
  printf "%s slots=2\n%s slots=2\n" "${ADDR[1]}" "${ADDR[2]}" > "$WORK/hostfile"
  MOE_NETNS_MAP="${ADDR[1]}=${HOSTS[1]},${ADDR[2]}=${HOSTS[2]}" nsenter --net="/run/netns/${HOSTS[0]}" \
    mpirun -np 4 --hostfile "$WORK/hostfile" --allow-run-as-root \
    --mca plm_rsh_agent "$SRC/deploy/mpi/netns-agent.sh" --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    -x MOE_NETNS_MAP \
    "$BUILD/worker/moe-worker" --coordinator "$CONTROL" --model "$MODEL" --heartbeat-ms 300 \
    --coordinator-lost-s 5 > "$WORK/workers-$1.log" 2>&1 &
  MPIRUN_PID=$!
}
# Kills the worker job: its mpirun, then whatever still runs on the worker hosts.
kill_workers() {
  kill -9 "$MPIRUN_PID" 2>/dev/null
  wait "$MPIRUN_PID" 2>/dev/null
  for _ in $(seq 1 50); do
    local left=""
    for h in "${HOSTS[1]}" "${HOSTS[2]}"; do left+=$(ip netns pids "$h"); done
    [[ -z $left ]] && return 0
    kill -9 $left 2>/dev/null
    sleep 0.1
  done
  fail "worker processes would not die"
}

nsenter --net="/run/netns/${HOSTS[0]}" "$BUILD/coordinator/moe-coordinator" --model "$MODEL" --world-size 4 \
  --tp 2 --listen "$COORD" --cluster-listen "$CONTROL" --heartbeat-timeout-s 3 \
  > "$WORK/coordinator.log" 2>&1 &
COORD_PID=$!
wait_health NOT_SERVING 10 || fail "coordinator did not come up NOT_SERVING"
launch_workers 1
wait_health SERVING 60 || fail "cluster did not become SERVING"
log "SERVING with 4 ranks on 2 hosts"

GOT=$(client --prompt-ids $PROMPT --max-tokens 24 --ignore-eos 2>/dev/null)
[[ "$GOT" == "$WANT" ]] || fail "output '$GOT' differs from one rank's '$WANT'"
log "generation matches the single-rank output"

# fault_under_load WHAT CMD...: a long request in flight, then CMD (the fault); the request must
# fail with UNAVAILABLE within MAX_DETECT_S and health turn NOT_SERVING.
fault_under_load() {
  local what=$1
  shift
  client --prompt-ids $PROMPT --max-tokens 400 --ignore-eos > "$WORK/inflight.out" 2> "$WORK/inflight.err" &
  local inflight=$!
  sleep 0.5
  kill -0 $inflight 2>/dev/null || fail "the long request ended before the $what"
  local cut=$(date +%s%3N)
  "$@"
  log "$what"
  wait $inflight && fail "the in-flight request succeeded after the $what"
  local elapsed=$(( $(date +%s%3N) - cut ))
  grep -q "UNAVAILABLE" "$WORK/inflight.err" || fail "in-flight request did not fail with UNAVAILABLE: $(cat "$WORK/inflight.err")"
  log "in-flight request failed with UNAVAILABLE after ${elapsed} ms: $(cat "$WORK/inflight.err")"
  (( elapsed <= MAX_DETECT_S * 1000 )) || fail "failure took ${elapsed} ms (bound ${MAX_DETECT_S} s)"
  [[ $(client --health) == NOT_SERVING ]] || fail "health is not NOT_SERVING after the $what"
  log "health NOT_SERVING"
}

fault_under_load "cut of host 2's link" nsenter --net="/run/netns/$SW" ip link set p2 down

# Relaunch the workers (the operator's job, or Kubernetes'): old ones are killed, link restored.
kill_workers
nsenter --net="/run/netns/$SW" ip link set p2 up
wait_reachable
launch_workers 2
wait_health SERVING 60 || fail "cluster did not serve again after the relaunch"
kill -0 $COORD_PID || fail "the coordinator died"
GOT=$(client --prompt-ids $PROMPT --max-tokens 24 --ignore-eos 2>/dev/null)
[[ "$GOT" == "$WANT" ]] || fail "output after the relaunch '$GOT' differs from '$WANT'"
log "SERVING again with the same coordinator (pid $COORD_PID); output matches"
# A worker<->worker partition: each worker host routes the other's address into a blackhole.
partition() {  # partition add|del
  nsenter --net="/run/netns/${HOSTS[1]}" ip route "$1" blackhole "${ADDR[2]}/32"
  nsenter --net="/run/netns/${HOSTS[2]}" ip route "$1" blackhole "${ADDR[1]}/32"
}
partition_both_reach_coordinator() {
  partition add
  nsenter --net="/run/netns/${HOSTS[1]}" ping -c1 -W1 "${ADDR[0]}" >/dev/null || fail "host 1 lost the coordinator"
  nsenter --net="/run/netns/${HOSTS[2]}" ping -c1 -W1 "${ADDR[0]}" >/dev/null || fail "host 2 lost the coordinator"
}
fault_under_load "partition of host 1 from host 2 (both still reach the coordinator)" \
  partition_both_reach_coordinator
# (a heartbeat timeout would have failed it first, and then no step deadline is checked)
grep -q "a rank is wedged" "$WORK/coordinator.log" || fail "the coordinator did not fail the cluster by the step deadline"
log "the step deadline caught it: $(grep -m1 "a rank is wedged" "$WORK/coordinator.log" | sed 's/.*\] //')"
kill_workers
partition del
wait_reachable
launch_workers 3
wait_health SERVING 60 || fail "cluster did not serve again after the partition healed"
GOT=$(client --prompt-ids $PROMPT --max-tokens 24 --ignore-eos 2>/dev/null)
[[ "$GOT" == "$WANT" ]] || fail "output after the partition '$GOT' differs from '$WANT'"
log "SERVING again after the partition; output matches"

kill -TERM $COORD_PID
wait $COORD_PID || fail "coordinator exit code $?"
log "PASSED"
