#!/usr/bin/env bash
# Packs the GPU checks for a machine that has a GPU and the CUDA runtime but none of the
# project's other libraries: the CUDA test binaries and cuda_bench, built here, with the shared
# libraries they need that are not the C runtime or CUDA's own, into out/gpu-pack.tar.xz.
#   bench/gpu/pack.sh [BUILD_DIR]      (default: build; configure with CUDA found)
# Then, on the GPU machine, from the repository root: bench/gpu/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build}"
targets=(cuda_kernels_test cuda_engine_test cuda_bench)
echo "pack: building ${targets[*]} in $build"
cmake --build "$build" --target "${targets[@]}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/gpu-pack/bin" "$stage/gpu-pack/lib"
cp "$build/tests/cuda_kernels_test" "$build/tests/cuda_engine_test" "$build/bench/cuda_bench" \
  "$stage/gpu-pack/bin/"
# Every library the binaries load, except the C/C++ runtime and CUDA's (the GPU machine has its
# own, matching its driver).
for b in "$stage"/gpu-pack/bin/*; do
  ldd "$b" | awk '$3 ~ /^\// {print $3}'
done | sort -u |
  grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so|/usr/local/cuda|/libcuda\.so' |
  while read -r lib; do cp -L "$lib" "$stage/gpu-pack/lib/"; done
mkdir -p "$root/out"
tar -C "$stage" -cJf "$root/out/gpu-pack.tar.xz" gpu-pack
echo "pack: $(ls "$stage/gpu-pack/lib" | wc -l) libraries; out/gpu-pack.tar.xz is" \
  "$(du -h "$root/out/gpu-pack.tar.xz" | cut -f1)"
