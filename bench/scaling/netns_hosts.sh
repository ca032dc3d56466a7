# Emulated hosts for the scaling benchmarks, sourced by run_netns_*.sh: network namespaces
# ${HOSTS[0..N]} on a bridge in a switch namespace, host i at 10.79.0.(i+1); host 0 runs mpirun,
# hosts 1..N one rank each (mpirun reaches them through deploy/mpi/netns-agent.sh). Needs root.
#   netns_hosts_up N      make them (removed again at exit)
#   netns_shape RATE      shape hosts 1..N's links to RATE Gbit/s (tc tbf); prints the round trip us
#   netns_mpirun ARGS...  mpirun over hosts 1..N (one slot each) from host 0
TAG=moes$$
SW=${TAG}sw
HOSTS=()
netns_cleanup() {
  for ns in "${HOSTS[@]}" "$SW"; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null
    ip netns del "$ns" 2>/dev/null
  done
  rm -f /tmp/$TAG.hosts
}
netns_hosts_up() {
  local n=$1 i h map=""
  trap netns_cleanup EXIT
  ip netns add "$SW"
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 up
  : > /tmp/$TAG.hosts
  for ((i = 0; i <= n; ++i)); do
    h=${TAG}h$i
    HOSTS+=("$h")
    ip netns add "$h"
    ip link add eth0 netns "$h" type veth peer name "p$i" netns "$SW"
    ip -n "$h" addr add "10.79.0.$((i + 1))/24" dev eth0
    ip -n "$h" link set eth0 up
    ip -n "$h" link set lo up
    ip -n "$SW" link set "p$i" master br0
    ip -n "$SW" link set "p$i" up
    if ((i > 0)); then
      echo "10.79.0.$((i + 1)) slots=1" >> /tmp/$TAG.hosts
      map+="${map:+,}10.79.0.$((i + 1))=$h"
    fi
  done
  export MOE_NETNS_MAP=$map
}
netns_shape() {
  local rate=$1 i bytes_per_s rtt_ms
  bytes_per_s=$(awk -v r="$rate" 'BEGIN {printf "%d", r * 1e9 / 8}')
  for ((i = 1; i < ${#HOSTS[@]}; ++i)); do
    ip netns exec "${HOSTS[$i]}" tc qdisc replace dev eth0 root tbf rate "${rate}gbit" \
      burst $((bytes_per_s / 250 + 16384)) latency 200ms
  done
  rtt_ms=$(ip netns exec "${HOSTS[1]}" ping -c 20 -i 0.05 -q 10.79.0.3 | awk -F/ '/rtt/ {print $5}')
  awk -v t="$rtt_ms" 'BEGIN {printf "%.1f\n", t * 1000}'
}
netns_mpirun() {
  ip netns exec "${HOSTS[0]}" mpirun -np $((${#HOSTS[@]} - 1)) --hostfile /tmp/$TAG.hosts \
    --allow-run-as-root --mca plm_rsh_agent "$SRC/deploy/mpi/netns-agent.sh" \
    --mca plm_rsh_no_tree_spawn 1 --mca mpi_yield_when_idle 1 --mca btl tcp,self \
    --mca btl_tcp_if_include 10.79.0.0/24 --mca oob_tcp_if_include 10.79.0.0/24 -x MOE_NETNS_MAP \
    "$@"
}
