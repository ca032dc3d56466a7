#!/usr/bin/env bash
# moe-plan's predictions for the published DeepSeek-V3 deployments, as a markdown table.
# Usage: bench/scaling/planner_vs_published.sh [build-dir] [--csv]
set -euo pipefail
PLAN=${1:-build}/tools/moe-plan
FORMAT=${2:-md}
row() {  # short label, label, published tokens/s per node, phase, moe-plan flags...
  local short=$1 label=$2 published=$3 phase=$4
  shift 4
  local json
  json=$("$PLAN" --model deepseek-v3 --json "$@" || true)
  "$(dirname "$0")/../../tools/venv-python" - "$label" "$published" "$phase" "$json" "$*" "$FORMAT" "$short" <<'PY'
import json, sys
label, published, phase, raw, flags, fmt, short = sys.argv[1:8]
j = json.loads(raw)
p = j[phase]
pred = p["tokens_per_s_per_node"]
pub = float(published)
if fmt == "--csv":
    print(f"{short},{pred:.0f},{p['tokens_per_s_per_node_no_overlap']:.0f},{pub:.0f}")
else:
    print(f"| {label} | `{flags}` | {pred:,.0f} | {p['tokens_per_s_per_node_no_overlap']:,.0f} | "
          f"{pub:,.0f} | {pub / pred:.2f} | {1e3 * p['compute_s']:.1f} / {1e3 * p['hbm_s']:.1f} / "
          f"{1e3 * p['network_s']:.1f} |")
PY
}
if [[ $FORMAT == --csv ]]; then
  echo "deployment,predicted,predicted_no_overlap,published"
else
  echo "| deployment | moe-plan flags | predicted tokens/s/node (best of overlap / none) | no overlap | published | published / predicted | compute / HBM / network ms per step |"
  echo "|---|---|---|---|---|---|---|"
fi
row "DeepSeek prefill (all input)" "DeepSeek prefill, H800, EP32 (4 nodes), input incl. cache hits" 73700 prefill \
  --gpu h800 --nodes 4 --attn-tp 1 --redundant-experts 32 --prefill-tokens 16384 --input-len 4096
row "DeepSeek prefill (computed)" "DeepSeek prefill, same, computed tokens only (56.3% were cache hits)" 32200 prefill \
  --gpu h800 --nodes 4 --attn-tp 1 --redundant-experts 32 --prefill-tokens 16384 --input-len 4096
row "DeepSeek decode" "DeepSeek decode, H800, EP144 (18 nodes), ~88 seqs/GPU" 14800 decode \
  --gpu h800 --nodes 18 --attn-tp 1 --redundant-experts 32 --decode-batch 88 --input-len 4096 --output-len 1000
row "SGLang prefill" "SGLang prefill, H100, EP32 (4 nodes), 2000-token inputs" 52300 prefill \
  --gpu h100 --nodes 4 --attn-tp 1 --redundant-experts 32 --prefill-tokens 16384 --input-len 2000
row "SGLang decode (128/GPU)" "SGLang decode, H100, EP72 (9 nodes), 128 seqs/GPU" 22300 decode \
  --gpu h100 --nodes 9 --attn-tp 1 --redundant-experts 32 --decode-batch 128 --input-len 2000 --output-len 100
row "SGLang decode (256/GPU)" "SGLang decode, same, 256 seqs/GPU" 22300 decode \
  --gpu h100 --nodes 9 --attn-tp 1 --redundant-experts 32 --decode-batch 256 --input-len 2000 --output-len 100
