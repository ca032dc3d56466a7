#!/usr/bin/env bash
# On a machine with a GPU, from the repository root, with out/gpu-pack.tar.xz (bench/gpu/pack.sh)
# beside it: runs every CUDA kernel test and the GPU-vs-CPU engine tests (a skipped test is a
# failure here), then cuda_bench. Logs go to $OUT (or out/gpu-run), the table last on stdout.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
logs="${OUT:-$root/out/gpu-run}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$logs"
tar -C "$work" -xJf "$root/out/gpu-pack.tar.xz"
export LD_LIBRARY_PATH="$work/gpu-pack/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$logs/device.txt"
status=0
for t in cuda_kernels_test cuda_engine_test; do
  echo "run: $t"
  "$work/gpu-pack/bin/$t" --gtest_brief=1 >"$logs/$t.log" 2>&1
  rc=$?
  tail -n 3 "$logs/$t.log"
  if [ $rc -ne 0 ] || grep -q "SKIPPED" "$logs/$t.log"; then
    echo "run: $t FAILED (exit $rc, or tests skipped on a GPU machine): see $logs/$t.log"
    status=1
  fi
done
echo "run: cuda_bench"
(cd "$work" && "$work/gpu-pack/bin/cuda_bench" --model "$work/small-dsv3") \
  >"$logs/cuda_bench.txt" 2>"$logs/cuda_bench.err" || status=1
cat "$logs/cuda_bench.txt"
exit $status
