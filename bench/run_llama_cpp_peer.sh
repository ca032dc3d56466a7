#!/usr/bin/env bash
# llama.cpp as the CPU peer, on the same small-dsv3 checkpoint converted to GGUF:
#   1. The same model: the checkpoint converted at f32 gives, greedy, the same tokens from
#      llama-completion as moe-generate (compared as text, special tokens shown).
#   2. Throughput in the layouts nearest to ours, from the bf16 GGUF with llama-quantize:
#        bf16          every tensor bf16 (ours: the bf16 checkpoint)
#        Q8_0          embedding and lm_head bf16, the rest Q8_0 (ours: fp8, DeepSeek-V3's layout)
#        Q4_0          routed experts Q4_0, the rest bf16 (ours: int4, Kimi K2 Thinking's layout)
#        Q4_0-default  llama-quantize's own Q4_0 mixture (no pair; for reference)
#      timed with llama-bench (prefill 512 tokens, decode 32 at batch 1) and llama-batched-bench
#      (64-token prompts, 32 decoded tokens, 1/8/32 sequences), then this engine's engine_bench
#      (a 64-token context, 32 decode steps at batch 1/8/32, a 512-token prefill) twice: with x in
#      float32 (exact) and with x rounded as llama.cpp rounds it for that weight type
#      (--activations bf16 for bf16 and fp8, int8 for int4). All on every core, the pairs back to
#      back.
# Usage: bench/run_llama_cpp_peer.sh LLAMA_CPP_DIR PYTHON [build-dir] [work-dir]
#   LLAMA_CPP_DIR  a llama.cpp source tree with build/bin/{llama-bench,llama-batched-bench,
#                  llama-quantize,llama-completion} built (cmake -B build -DGGML_NATIVE=ON)
#   PYTHON         an interpreter with what convert_hf_to_gguf.py imports (torch, transformers,
#                  numpy, safetensors, sentencepiece)
#   env ROUNDS (default 3): rounds of the whole set
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n 2,22p "$0"; exit 2; }
LLAMA=$1
PYTHON=$2
BUILD=${3:-build}
WORK=${4:-models/llama-cpp-peer}
ROUNDS=${ROUNDS:-3}
BIN=$LLAMA/build/bin
for tool in llama-bench llama-batched-bench llama-quantize llama-completion; do
  [[ -x $BIN/$tool ]] || { echo "run_llama_cpp_peer: $BIN/$tool is not built" >&2; exit 1; }
done
HERE=$(cd "$(dirname "$0")" && pwd)
THREADS=$(nproc)
mkdir -p "$WORK"
for dtype in bf16 fp8 int4; do
  model=$WORK/small-dsv3-$dtype
  [[ -f $model/config.json ]] ||
    "$BUILD/tools/moe-make-model" --preset small-dsv3 --dtype "$dtype" --out "$model"
done
convert() {  # convert OUTTYPE CHECKPOINT OUT.gguf
  [[ -f $3 ]] && return
  echo "run_llama_cpp_peer: converting $2 to $3" >&2
  "$PYTHON" "$HERE/llama_cpp/convert.py" "$LLAMA" "$2" "$3" --outtype "$1" >"$3.log" 2>&1
}
convert bf16 "$WORK/small-dsv3-bf16" "$WORK/small-dsv3-bf16.gguf"
convert f32 "$WORK/small-dsv3-bf16" "$WORK/small-dsv3-f32.gguf"

# 1. The same model.
PROMPT="The capital of France is"
ids=$("$BUILD/tools/moe-tokenize" --model "$WORK/small-dsv3-bf16" --text "$PROMPT")
ours=$("$BUILD/tools/moe-generate" --model "$WORK/small-dsv3-bf16" --prompt-ids "$ids" \
  --max-new-tokens 12 --ignore-eos 2>/dev/null | tr ' ' ',')
# Text from a token that ends inside a UTF-8 sequence: ours decodes it as U+FFFD, llama.cpp prints
# the raw bytes; both are dropped before comparing.
ours_text=$("$BUILD/tools/moe-tokenize" --model "$WORK/small-dsv3-bf16" --decode "$ids,$ours" |
  LC_ALL=C sed 's/\xef\xbf\xbd//g')
theirs_text=$("$BIN/llama-completion" -m "$WORK/small-dsv3-f32.gguf" -p "$PROMPT" -n 12 --temp 0 \
  -no-cnv -sp --ignore-eos -t "$THREADS" --no-warmup 2>/dev/null | iconv -c -f UTF-8 -t UTF-8)
if [[ $theirs_text == "$ours_text"* ]]; then
  echo "same model: llama.cpp (f32 GGUF) and moe-generate give the same 12 greedy tokens"
else
  printf 'run_llama_cpp_peer: the greedy tokens differ\n  ours:      %s\n  llama.cpp: %s\n' \
    "$ours_text" "$theirs_text" >&2
  exit 1
fi

# 2. Throughput.
quantize() {  # quantize NAME TYPE [llama-quantize options...]
  local name=$1 type=$2
  shift 2
  [[ -f $WORK/small-dsv3-$name.gguf ]] ||
    "$BIN/llama-quantize" "$@" "$WORK/small-dsv3-bf16.gguf" "$WORK/small-dsv3-$name.gguf" "$type" \
      "$THREADS" >"$WORK/quantize-$name.log" 2>&1
}
BF16_ENDS=(--output-tensor-type bf16 --token-embedding-type bf16)
quantize Q8_0 Q8_0 "${BF16_ENDS[@]}"
quantize Q4_0 Q4_0 "${BF16_ENDS[@]}" --tensor-type 'attn_=bf16' --tensor-type 'shexp=bf16' \
  --tensor-type 'ffn_(gate|up|down)\.weight=bf16'
quantize Q4_0-default Q4_0
ls -l "$WORK"/*.gguf
for round in $(seq "$ROUNDS"); do
  echo "=== round $round"
  for pair in bf16:bf16 Q8_0:fp8 Q4_0:int4 Q4_0-default:; do
    gguf=${pair%%:*} ours=${pair##*:}
    echo "--- llama.cpp $gguf"
    "$BIN/llama-bench" -m "$WORK/small-dsv3-$gguf.gguf" -p 512 -n 32 -t "$THREADS" -r 3 2>/dev/null
    "$BIN/llama-batched-bench" -m "$WORK/small-dsv3-$gguf.gguf" -c 4096 -b 2048 -ub 512 \
      -npp 64 -ntg 32 -npl 1,8,32 -t "$THREADS" 2>/dev/null | grep "^|"
    [[ -n $ours ]] || continue
    rounded=bf16
    [[ $ours == int4 ]] && rounded=int8
    for activations in f32 $rounded; do
      echo "--- engine $ours --activations $activations"
      "$BUILD/bench/engine_bench" --model "$WORK/small-dsv3-$ours" --decode-steps 32 \
        --activations "$activations" 2>/dev/null
    done
  done
done
