#!/usr/bin/env bash
# Regenerates docs/scaling/: the planner's predictions for published deployments, strong/weak
# scaling of small-dsv3 at 1-8 ranks, dispatch/combine between bandwidth-shaped emulated hosts
# against the communication model, and the plots. Needs root (network namespaces), ~15 minutes.
# Usage: bench/scaling/run_all.sh [build-dir] [model-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
MODEL=${2:-models/small-dsv3}
OUT=docs/scaling
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[[ -f $MODEL/config.json ]] || "$BUILD/tools/moe-make-model" --preset small-dsv3 --dtype fp8 --out "$MODEL"
tools/install-deps.sh
tools/venv-python -c "import matplotlib" 2>/dev/null || tools/venv-python -m pip install -q matplotlib
echo "run_all: planner vs published"
bench/scaling/planner_vs_published.sh "$BUILD" > "$OUT/planner_vs_published.md"
bench/scaling/planner_vs_published.sh "$BUILD" --csv > "$OUT/planner_vs_published.csv"
echo "run_all: dispatch/combine between emulated hosts"
bench/scaling/run_netns_alltoall.sh "$BUILD" . > "$OUT/alltoall_netns.csv"
echo "run_all: engine scaling (offline and served)"
bench/scaling/run_engine_scaling.sh "$BUILD" "$MODEL" > "$OUT/engine_scaling.csv"
tools/venv-python bench/scaling/plot.py "$OUT"
