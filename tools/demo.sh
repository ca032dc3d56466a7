#!/usr/bin/env bash
# The main job on one machine: installs dependencies, builds, writes the default tiny model
# (tiny-dsv3) and shows what was written.
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=1
tools/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build
MODEL=${MOE_MODEL_DIR:-models/tiny-dsv3}
[[ -f $MODEL/config.json ]] || build/tools/moe-make-model --preset tiny-dsv3 --out "$MODEL"
ls -l "$MODEL"
