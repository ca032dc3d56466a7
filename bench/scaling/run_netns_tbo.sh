#!/usr/bin/env bash
# Two-batch overlap between emulated hosts (bench/scaling/netns_hosts.sh): one rank on each of
# two network namespaces, their links shaped with tc to each rate, MoE dispatch over all-to-all-v
# (MPI's TCP transport between the hosts); tbo_bench runs the same prefill and decode steps with
# and without two-batch overlap and prints how much of the communication was hidden. The two
# hosts share this machine's cores (one rank on each, one thread each).
# Needs root. Usage: run_netns_tbo.sh BUILD SOURCE MODEL [RATES_GBIT...] (env: TBO_ARGS, extra
# tbo_bench flags)
set -uo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
MODEL=$(cd "$3" && pwd)
shift 3
RATES=("$@")
[[ ${#RATES[@]} -gt 0 ]] || RATES=(0.1 0.5 2)
[[ $(id -u) -eq 0 ]] || { echo "run_netns_tbo.sh: needs root" >&2; exit 77; }
source "$SRC/bench/scaling/netns_hosts.sh"
netns_hosts_up 2
for rate in "${RATES[@]}"; do
  rtt_us=$(netns_shape "$rate")
  echo "== links shaped to $rate Gbit/s (round trip $rtt_us us)"
  # shellcheck disable=SC2086
  netns_mpirun --bind-to none "$BUILD/bench/tbo_bench" --model "$MODEL" ${TBO_ARGS:-} 2>&1 |
    grep -v "^$"
done
