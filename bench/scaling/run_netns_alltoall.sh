#!/usr/bin/env bash
# MoE dispatch + combine between emulated hosts: three network namespaces with one rank each,
# joined through a bridge, each host's link shaped with tc (tbf) to a given rate; mpirun runs in a
# fourth namespace through deploy/mpi/netns-agent.sh. For each rate, dispatch_bench measures the
# exchange (float32 rows of hidden size 7168, top-8 of 256 experts) and prints the planner's
# communication model for the same bytes (links at the shaped rate, latency = the measured round
# trip). This kernel has no netem, so latency is not shaped: only bandwidth is. The token bucket
# lets its burst (rate/250 bytes, the least the kernel needs to reach the rate) leave at line rate,
# so exchanges smaller than that run faster than the model.
# Each emulated host has one slot, so Open MPI is told to yield when idle (the 3 ranks share 2
# vCPUs). Writes CSV to stdout: rate_gbit,rtt_us,world,tokens,send_bytes_per_rank,ours_us,raw_us,
# model_us (send_bytes_per_rank: the most any rank sent to the others in the dispatch).
# Needs root. Usage: run_netns_alltoall.sh BUILD SOURCE [RATES_GBIT...]
set -uo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
shift 2
RATES=("$@")
[[ ${#RATES[@]} -gt 0 ]] || RATES=(0.2 1 4)
[[ $(id -u) -eq 0 ]] || { echo "run_netns_alltoall.sh: needs root" >&2; exit 77; }
TAG=moes$$
SW=${TAG}sw
HOSTS=(${TAG}h0 ${TAG}h1 ${TAG}h2 ${TAG}h3)
cleanup() {
  for ns in "${HOSTS[@]}" "$SW"; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null
    ip netns del "$ns" 2>/dev/null
  done
  rm -f /tmp/$TAG.hosts
}
trap cleanup EXIT
ip netns add "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
for i in 0 1 2 3; do
  h=${HOSTS[$i]}
  ip netns add "$h"
  ip link add eth0 netns "$h" type veth peer name "p$i" netns "$SW"
  ip -n "$h" addr add "10.79.0.$((i + 1))/24" dev eth0
  ip -n "$h" link set eth0 up
  ip -n "$h" link set lo up
  ip -n "$SW" link set "p$i" master br0
  ip -n "$SW" link set "p$i" up
done
printf "10.79.0.2 slots=1\n10.79.0.3 slots=1\n10.79.0.4 slots=1\n" > /tmp/$TAG.hosts
MAP="10.79.0.2=${HOSTS[1]},10.79.0.3=${HOSTS[2]},10.79.0.4=${HOSTS[3]}"
echo "rate_gbit,rtt_us,world,tokens,send_bytes_per_rank,ours_us,raw_us,model_us"
for rate in "${RATES[@]}"; do
  bytes_per_s=$(awk -v r="$rate" 'BEGIN {printf "%d", r * 1e9 / 8}')
  for i in 1 2 3; do
    ip netns exec "${HOSTS[$i]}" tc qdisc replace dev eth0 root tbf rate "${rate}gbit" \
      burst $((bytes_per_s / 250 + 16384)) latency 200ms
  done
  rtt_ms=$(ip netns exec "${HOSTS[1]}" ping -c 20 -i 0.05 -q 10.79.0.3 | awk -F/ '/rtt/ {print $5}')
  rtt_us=$(awk -v t="$rtt_ms" 'BEGIN {printf "%.1f", t * 1000}')
  gbps=$(awk -v r="$rate" 'BEGIN {print r / 8}')
  MOE_NETNS_MAP=$MAP ip netns exec "${HOSTS[0]}" mpirun -np 3 --hostfile /tmp/$TAG.hosts \
    --allow-run-as-root --mca plm_rsh_agent "$SRC/deploy/mpi/netns-agent.sh" \
    --mca plm_rsh_no_tree_spawn 1 --mca mpi_yield_when_idle 1 --mca btl tcp,self --mca btl_tcp_if_include 10.79.0.0/24 \
    --mca oob_tcp_if_include 10.79.0.0/24 -x MOE_NETNS_MAP \
    "$BUILD/bench/dispatch_bench" --csv --tokens 1,16,64,256 --iters 3 --model-gbps "$gbps" \
    --model-latency-us "$rtt_us" --ranks-per-node 1 2>/dev/null |
    awk -v r="$rate" -v t="$rtt_us" 'NR > 1 { print r "," t "," $0 }'
done
