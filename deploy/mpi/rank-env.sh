#!/usr/bin/env bash
# Per-rank environment for a worker started by mpirun: local rank i uses GPU i (unless the
# launcher already restricted CUDA_VISIBLE_DEVICES), then runs the given command.
if [[ -z ${CUDA_VISIBLE_DEVICES:-} && -n ${OMPI_COMM_WORLD_LOCAL_RANK:-} ]]; then
  export CUDA_VISIBLE_DEVICES=$OMPI_COMM_WORLD_LOCAL_RANK
fi
exec "$@"
