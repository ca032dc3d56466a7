#!/usr/bin/env bash
# MoE dispatch + combine between emulated hosts: three network namespaces with one rank each,
# joined through a bridge, each host's link shaped with tc (tbf) to a given rate; mpirun runs in a
# fourth namespace through deploy/mpi/netns-agent.sh (bench/scaling/netns_hosts.sh). For each
# rate, dispatch_bench measures the exchange (float32 rows of hidden size 7168, top-8 of 256
# experts) and prints the planner's communication model for the same bytes (links at the shaped
# rate, latency = the measured round trip). This kernel has no netem, so latency is not shaped:
# only bandwidth is. The token bucket lets its burst (rate/250 bytes, the least the kernel needs to
# reach the rate) leave at line rate, so exchanges smaller than that run faster than the model.
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
source "$SRC/bench/scaling/netns_hosts.sh"
netns_hosts_up 3
echo "rate_gbit,rtt_us,world,tokens,send_bytes_per_rank,ours_us,raw_us,model_us"
for rate in "${RATES[@]}"; do
  rtt_us=$(netns_shape "$rate")
  gbps=$(awk -v r="$rate" 'BEGIN {print r / 8}')
  netns_mpirun "$BUILD/bench/dispatch_bench" --csv --tokens 1,16,64,256 --iters 3 \
    --model-gbps "$gbps" --model-latency-us "$rtt_us" --ranks-per-node 1 2>/dev/null |
    awk -v r="$rate" -v t="$rtt_us" 'NR > 1 { print r "," t "," $0 }'
done
