#!/usr/bin/env bash
# An mpirun remote agent (plm_rsh_agent) for hosts emulated by network namespaces on one machine:
# "ssh HOST command" becomes "run command inside the namespace that owns HOST's address", with its
# own host name (UTS namespace) so Open MPI sees distinct nodes. Used by the multi-node tests:
#   mpirun --mca plm_rsh_agent deploy/mpi/netns-agent.sh --hostfile <IPs> ...
# MOE_NETNS_MAP lists "address=namespace" pairs, comma-separated.
set -euo pipefail
host=$1
shift
ns=""
IFS=',' read -ra pairs <<< "${MOE_NETNS_MAP:?MOE_NETNS_MAP is not set}"
for p in "${pairs[@]}"; do
  [[ ${p%%=*} == "$host" ]] && ns=${p#*=}
done
[[ -n $ns ]] || { echo "netns-agent: no namespace for $host" >&2; exit 255; }
exec nsenter --net="/run/netns/$ns" unshare --uts sh -c "hostname $ns; $*"
