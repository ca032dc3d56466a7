// The tokenizer files moe-make-model writes beside the weights, in each family's published
// layout, from the small byte-level BPE trained by tools/python/train_tokenizer.py
// (tools/data/bpe-merges.txt, compiled in), cut to the preset's vocab size:
//  - DeepSeek-V3 (model_type deepseek_v3): tokenizer.json (DeepSeek's pre-tokenizer regexes,
//    byte-level BPE, BOS template, its added tokens: BOS/EOS/PAD at ids 0-2, the chat and tool
//    tokens at the top of the vocabulary) and tokenizer_config.json (LlamaTokenizerFast, BOS on).
//  - Kimi K2 (model_type kimi_k2): tiktoken.model (ranks; Kimi's 256 reserved special ids after
//    them) and tokenizer_config.json with its added_tokens_decoder.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "common/model_config.h"

namespace moe {

absl::Status WriteTokenizer(const ModelConfig& config, const std::string& dir);

}  // namespace moe
