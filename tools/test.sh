#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: installs dependencies, builds the CUDA configuration
# (compile + link; tests run on the CPU backend) and the CPU-only configuration, runs the bounded
# fuzz run over the safetensors header parser, then the whole ctest suite.
# Usage: tools/test.sh [extra ctest args, e.g. -L unit]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECONDS=${MOE_FUZZ_SECONDS:-60}
export CCACHE_BASEDIR=$ROOT CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache} CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
export CCACHE_NOHASHDIR=1

step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }

step "dependencies"
tools/install-deps.sh

step "build: default configuration (CUDA when nvcc is present), warnings as errors"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON >/dev/null
cmake --build build

step "build: CPU-only configuration (-DMOE_CUDA=OFF)"
cmake -S . -B build-cpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON -DMOE_CUDA=OFF \
  -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF >/dev/null
cmake --build build-cpu

step "fuzz: safetensors header parser, ${FUZZ_SECONDS}s under libFuzzer + ASan + UBSan"
cmake -S tests/fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build-fuzz
corpus=$(mktemp -d)
cp tests/fuzz/corpus/* "$corpus"/
build-fuzz/safetensors_header_fuzz -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
  "$corpus" 2>&1 | grep -E "^(Done|stat::number_of_executed_units|stat::new_units)|ERROR|SUMMARY"
rm -rf "$corpus"

step "tests"
ctest --test-dir build --output-on-failure --timeout 900 "$@"
step "all tests passed"
