#include "tools/tokenizer_maker.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "text/byte_level.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

constexpr std::string_view kMergesText =
#include "tools/bpe_merges.inc"
    ;

// The published chat templates of DeepSeek-V3.1 and Kimi K2 (tools/data/chat_templates/).
constexpr const char* kDeepseekChatTemplate =
#include "tools/chat_template_deepseek-v3.1.inc"
    ;
constexpr const char* kKimiChatTemplate =
#include "tools/chat_template_kimi-k2.inc"
    ;

constexpr const char* kBos = "<｜begin▁of▁sentence｜>";
constexpr const char* kEos = "<｜end▁of▁sentence｜>";
constexpr const char* kPad = "<｜▁pad▁｜>";
// DeepSeek-V3's chat, tool and reasoning tokens (not `special` in its tokenizer.json).
constexpr const char* kDeepseekTopTokens[] = {
    "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>",
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>", "<｜tool▁sep｜>", "<think>", "</think>"};
// DeepSeek-V3's three split regexes, before ByteLevel.
constexpr const char* kDeepseekSplits[] = {
    R"(\p{N}{1,3})", "[一-龥぀-ゟ゠-ヿ]+",
    R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^)" "\r\n" R"(\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[)"
    "\r\n" R"(]*|\s*[)" "\r\n" R"(]+|\s+(?!\S)|\s+)"};
// Kimi K2's special tokens, by offset after the ranks (the rest are <|reserved_token_N|>).
constexpr std::pair<int, const char*> kKimiSpecials[] = {
    {0, "[BOS]"}, {1, "[EOS]"}, {2, "<|im_end|>"}, {3, "<|im_user|>"}, {4, "<|im_assistant|>"},
    {6, "<|start_header_id|>"}, {7, "<|end_header_id|>"}, {9, "[EOT]"}, {10, "<|im_system|>"},
    {11, "<|tool_calls_section_begin|>"}, {12, "<|tool_calls_section_end|>"},
    {13, "<|tool_call_begin|>"}, {14, "<|tool_call_argument_begin|>"}, {15, "<|tool_call_end|>"},
    {17, "<|im_middle|>"}};
constexpr int kKimiReserved = 256;

// The trained merges as byte-level pairs, in rank order.
std::vector<std::pair<std::string, std::string>> Merges() {
  std::vector<std::pair<std::string, std::string>> merges;
  for (absl::string_view line : absl::StrSplit(absl::string_view(kMergesText.data(), kMergesText.size()), '\n')) {
    if (line.empty() || line[0] == '#') continue;
    std::pair<std::string, std::string> m = absl::StrSplit(line, absl::MaxSplits(' ', 1));
    merges.push_back(std::move(m));
  }
  return merges;
}

// The 256 byte-level characters in code point order (the order BPE training lists its alphabet;
// UTF-8 strings sort as their code points do).
std::vector<std::string> Alphabet() {
  std::vector<std::string> chars;
  for (int b = 0; b < 256; ++b) chars.push_back(text::ToByteLevel(std::string(1, static_cast<char>(b))));
  std::sort(chars.begin(), chars.end());
  return chars;
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

ordered_json AddedToken(int id, const std::string& content, bool special) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

ordered_json ConfigToken(const std::string& content) {
  return {{"__type", "AddedToken"}, {"content", content}, {"lstrip", false},
          {"normalized", true}, {"rstrip", false}, {"single_word", false}};
}

absl::Status WriteDeepseek(const ModelConfig& config, const fs::path& dir) {
  const int vocab = static_cast<int>(config.vocab_size);
  const int top = static_cast<int>(std::size(kDeepseekTopTokens));
  const int base = 3 + 256;
  if (vocab < base + top) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab_size ", vocab, " is too small for a byte-level tokenizer (at least ", base + top, ")"));
  }
  ordered_json vocab_json = ordered_json::object();
  vocab_json[kBos] = 0;
  vocab_json[kEos] = 1;
  vocab_json[kPad] = 2;
  int next = 3;
  for (const std::string& c : Alphabet()) vocab_json[c] = next++;
  ordered_json merges_json = ordered_json::array();
  for (const auto& [left, right] : Merges()) {
    if (next >= vocab - top) break;
    vocab_json[left + right] = next++;
    merges_json.push_back(left + " " + right);
  }
  ordered_json added = ordered_json::array();
  added.push_back(AddedToken(0, kBos, true));
  added.push_back(AddedToken(1, kEos, true));
  added.push_back(AddedToken(2, kPad, true));
  // As DeepSeek's own file does, placeholders fill the ids between the trained vocabulary and the
  // top tokens (HF tokenizers renumbers added tokens that leave a gap).
  for (int id = next; id < vocab - top; ++id) {
    added.push_back(AddedToken(id, absl::StrCat("<｜place▁holder▁no▁", id - next, "｜>"), true));
  }
  for (int i = 0; i < top; ++i) added.push_back(AddedToken(vocab - top + i, kDeepseekTopTokens[i], false));

  ordered_json splits = ordered_json::array();
  for (const char* p : kDeepseekSplits) {
    splits.push_back({{"type", "Split"}, {"pattern", {{"Regex", p}}}, {"behavior", "Isolated"},
                      {"invert", false}});
  }
  splits.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                    {"use_regex", false}});
  const ordered_json bos_item = {{"SpecialToken", {{"id", kBos}, {"type_id", 0}}}};
  ordered_json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", ordered_json::array()}}},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", splits}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {bos_item, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {bos_item, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", kBos}, {"type_id", 1}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{kBos, {{"id", kBos}, {"ids", {0}}, {"tokens", {kBos}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                   {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
        {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab_json},
        {"merges", merges_json}}}};
  MOE_RETURN_IF_ERROR(WriteText(dir / "tokenizer.json", tokenizer.dump(1) + "\n"));
  ordered_json tokenizer_config = {
      {"add_bos_token", true},
      {"add_eos_token", false},
      {"bos_token", ConfigToken(kBos)},
      {"clean_up_tokenization_spaces", false},
      {"eos_token", ConfigToken(kEos)},
      {"legacy", true},
      {"model_max_length", config.max_position_embeddings},
      {"pad_token", ConfigToken(kEos)},
      {"sp_model_kwargs", ordered_json::object()},
      {"unk_token", nullptr},
      {"tokenizer_class", "LlamaTokenizerFast"},
      {"chat_template", kDeepseekChatTemplate}};
  return WriteText(dir / "tokenizer_config.json", tokenizer_config.dump(2) + "\n");
}

absl::Status WriteKimi(const ModelConfig& config, const fs::path& dir) {
  const int vocab = static_cast<int>(config.vocab_size);
  if (vocab < 256 + kKimiReserved) {
    return absl::InvalidArgumentError(absl::StrCat("vocab_size ", vocab, " is too small for Kimi's layout (",
                                                   256 + kKimiReserved, ": 256 bytes and ",
                                                   kKimiReserved, " reserved special ids)"));
  }
  std::vector<std::string> ranks;
  for (int b = 0; b < 256; ++b) ranks.push_back(std::string(1, static_cast<char>(b)));
  for (const auto& [left, right] : Merges()) {
    if (static_cast<int>(ranks.size()) >= vocab - kKimiReserved) break;
    ranks.push_back(*text::FromByteLevel(left) + *text::FromByteLevel(right));
  }
  std::string model;
  for (size_t r = 0; r < ranks.size(); ++r) {
    absl::StrAppend(&model, absl::Base64Escape(ranks[r]), " ", r, "\n");
  }
  MOE_RETURN_IF_ERROR(WriteText(dir / "tiktoken.model", model));
  ordered_json decoder = ordered_json::object();
  const int n = static_cast<int>(ranks.size());
  for (const auto& [offset, content] : kKimiSpecials) {
    decoder[std::to_string(n + offset)] = {{"content", content}, {"lstrip", false},
                                           {"normalized", false}, {"rstrip", false},
                                           {"single_word", false}, {"special", true}};
  }
  ordered_json tokenizer_config = {
      {"added_tokens_decoder", decoder},
      {"additional_special_tokens", {"<|im_end|>", "<|im_user|>", "<|im_assistant|>",
                                     "<|start_header_id|>", "<|end_header_id|>", "[EOT]",
                                     "<|im_system|>", "<|im_middle|>"}},
      {"bos_token", "[BOS]"},
      {"clean_up_tokenization_spaces", false},
      {"eos_token", "[EOS]"},
      {"extra_special_tokens", ordered_json::object()},
      {"model_max_length", config.max_position_embeddings},
      {"tokenizer_class", "TikTokenTokenizer"},
      {"auto_map", {{"AutoTokenizer", {"tokenization_kimi.TikTokenTokenizer", nullptr}}}},
      {"chat_template", kKimiChatTemplate}};
  return WriteText(dir / "tokenizer_config.json", tokenizer_config.dump(2) + "\n");
}

}  // namespace

absl::Status WriteTokenizer(const ModelConfig& config, const std::string& dir) {
  if (config.model_type == "kimi_k2") return WriteKimi(config, dir);
  return WriteDeepseek(config, dir);
}

}  // namespace moe
