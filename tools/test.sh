#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: installs dependencies, builds the CUDA configuration
# (compile + link; tests run on the CPU backend) and the CPU-only configuration, runs the bounded
# fuzz runs over the safetensors header parser and the checkpoint reader, then the whole ctest suite. Each step prints what it
# does and how long it took; a summary of all steps comes last.
# Usage: tools/test.sh [extra ctest args, e.g. -L unit]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECONDS=${MOE_FUZZ_SECONDS:-30}
export CCACHE_BASEDIR=$ROOT CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache} CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
export CCACHE_NOHASHDIR=1
source tools/steps.sh

step "dependencies (Debian packages, Python venv in .venv)"
tools/install-deps.sh

step "build: default configuration (CUDA when nvcc is present), warnings as errors"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON >/dev/null
cmake --build build
command -v ccache >/dev/null && ccache --show-stats 2>/dev/null | grep -iE "^(hits|misses|cacheable)" || true

step "build: CPU-only configuration (-DMOE_CUDA=OFF)"
cmake -S . -B build-cpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON -DMOE_CUDA=OFF \
  -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF >/dev/null
cmake --build build-cpu

step "fuzz: safetensors header parser, checkpoint reader, tokenizers, request path, chat templates, ${FUZZ_SECONDS}s each under libFuzzer + ASan + UBSan"
cmake -S tests/fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build-fuzz
for target in safetensors_header_fuzz checkpoint_fuzz tokenizer_fuzz request_fuzz chat_template_fuzz; do
  corpus=$(mktemp -d)
  seeds=tests/fuzz/corpus
  [[ $target == tokenizer_fuzz ]] && seeds=tests/fuzz/corpus-tokenizer
  [[ $target == request_fuzz ]] && seeds=tests/fuzz/corpus-request
  [[ $target == chat_template_fuzz ]] && seeds=tests/fuzz/corpus-chat-template
  cp "$seeds"/* "$corpus"/
  echo "$target:"
  build-fuzz/$target -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
    "$corpus" 2>&1 | grep -E "^(Done|stat::number_of_executed_units|stat::new_units)|ERROR|SUMMARY"
  rm -rf "$corpus"
done

# Every test that runs Python must use the project's venv (CMake's MOE_PYTHON). The tests run with
# a PATH whose first `python3` refuses to run, so a test that picks the interpreter off PATH fails
# here instead of passing on a machine whose system Python happens to have the packages.
step "tests (a python3 on PATH that refuses to run guards the venv rule)"
guard=$(mktemp -d)
for name in python python3 python3.{7..15}; do
  printf '#!/bin/sh\necho "python guard: a test ran %s from PATH; run Python through MOE_PYTHON (the project venv)" >&2\nexit 97\n' \
    "$name" >"$guard/$name"
  chmod +x "$guard/$name"
done
if PATH=$guard:$PATH python3 -c pass 2>/dev/null; then echo "test.sh: the python guard does not work"; exit 1; fi
status=0
PATH=$guard:$PATH ctest --test-dir build --output-on-failure --timeout 900 \
  --output-junit "$ROOT/build/ctest-junit.xml" "$@" || status=$?
rm -rf "$guard"
# Why tests were skipped, from their own output (scripts print "SKIPPED: why", GoogleTest prints
# "file:line: Skipped" and then the reason), with how many tests each reason covers.
reasons=$({ grep -hoE "SKIPPED: .*" build/ctest-junit.xml | sed 's/^SKIPPED: //'
  grep -hA1 ": Skipped$" build/ctest-junit.xml | grep -vE "^--$|: Skipped$"; } |
  sed 's/&gt;/>/g; s/&lt;/</g; s/&quot;/"/g; s/&amp;/\&/g' | sort | uniq -c || true)
[[ -z $reasons ]] || { echo "test.sh: skipped tests, by reason:"; echo "$reasons"; }
[[ $status -eq 0 ]] || { steps_summary; echo "test.sh: ctest failed"; exit "$status"; }
step "all tests passed"
steps_summary
