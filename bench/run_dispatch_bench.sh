#!/usr/bin/env bash
# Dispatch + combine vs raw MPI_Alltoallv at W = 2, 4, 8 on this machine (oversubscribed beyond
# its cores), both transports. Usage: bench/run_dispatch_bench.sh [build-dir]
set -euo pipefail
BUILD=${1:-build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for transport in auto alltoallv; do
  for w in 2 4 8; do
    # Eight ranks of 4096 tokens would need ~22 GB here; stop at 2048.
    tokens=1,16,256,1024,4096
    [[ $w == 8 ]] && tokens=1,16,256,1024,2048
    MOE_DISPATCH=$transport mpirun -x MOE_DISPATCH --oversubscribe -np "$w" \
      "$BUILD/bench/dispatch_bench" --tokens "$tokens" --iters 3
    echo
  done
done
