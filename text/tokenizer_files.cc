#include "text/tokenizer_files.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "text/byte_level.h"

namespace moe::text {

const std::string_view kKimiPattern =
    R"([\p{sc:Han}]+)"
    R"(|[^\r\n\p{L}\p{N}]?(?:(?!\p{sc:Han})[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}])*)"
    R"((?:(?!\p{sc:Han})[\p{Ll}\p{Lm}\p{Lo}\p{M}])+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?(?:(?!\p{sc:Han})[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}])+)"
    R"((?:(?!\p{sc:Han})[\p{Ll}\p{Lm}\p{Lo}\p{M}])*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+)"
    R"(|\s+(?!\S))"
    R"(|\s+)";

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Kimi reserves this many ids after the mergeable ranks for special tokens.
constexpr int kKimiReservedSpecialTokens = 256;

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<json> ReadJson(const fs::path& path) {
  MOE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not JSON"));
  return j;
}

// A token of a byte-level vocabulary as bytes: a byte-level string decodes to the bytes it
// spells; anything else (added tokens such as "<｜begin▁of▁sentence｜>") is its own UTF-8.
std::string VocabBytes(const std::string& s) {
  if (auto b = FromByteLevel(s)) return *b;
  return s;
}

// An added token's flags from its JSON entry (tokenizer.json's added_tokens, or
// tokenizer_config.json's added_tokens_decoder), `special` unless it says otherwise when
// `special_by_default`.
// Ids in the files are JSON integers in [0, 2^24) (a float or a larger number is an error, not a
// conversion).
constexpr int64_t kMaxTokenId = int64_t{1} << 24;
absl::StatusOr<int32_t> TokenIdFromJson(const json& v, absl::string_view where) {
  if (!v.is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": id ", v.dump(), " is not an integer"));
  }
  const int64_t id = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX}
                         ? kMaxTokenId
                         : v.get<int64_t>();
  if (id < 0 || id >= kMaxTokenId) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": id ", v.dump(), " out of range"));
  }
  return static_cast<int32_t>(id);
}

AddedToken AddedTokenFromJson(const json& t, int32_t id, bool special_by_default) {
  AddedToken a;
  a.id = id;
  a.content = t.at("content").get<std::string>();
  a.special = t.value("special", special_by_default);
  a.lstrip = t.value("lstrip", false);
  a.rstrip = t.value("rstrip", false);
  a.single_word = t.value("single_word", false);
  return a;
}

// "bos_token": "..." or {"content": "..."} (or null).
std::optional<std::string> TokenContent(const json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const json& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v.at("content").get<std::string>();
  return std::nullopt;
}

// BOS/EOS and add_bos_token/add_eos_token from tokenizer_config.json (transformers' Llama-style
// tokenizers rebuild the post-processor from these flags, so where they are given they decide).
absl::Status ApplyConfig(const json& config, Tokenizer::Parts* parts) {
  for (const char* key : {"bos_token", "eos_token"}) {
    auto content = TokenContent(config, key);
    if (!content) continue;
    auto id = parts->TokenId(*content);
    if (!id) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " \"", *content, "\" is not a token of the tokenizer"));
    }
    (std::string_view(key) == "bos_token" ? parts->bos_id : parts->eos_id) = *id;
  }
  auto flag = [&](const char* key, std::optional<int32_t> id,
                  std::vector<int32_t>* where) -> absl::Status {
    if (!config.contains(key) || !config.at(key).is_boolean()) return absl::OkStatus();
    where->clear();
    if (!config.at(key).get<bool>()) return absl::OkStatus();
    if (!id) {
      return absl::InvalidArgumentError(absl::StrCat(key, " is true but there is no such token"));
    }
    where->push_back(*id);
    return absl::OkStatus();
  };
  MOE_RETURN_IF_ERROR(flag("add_bos_token", parts->bos_id, &parts->prefix));
  return flag("add_eos_token", parts->eos_id, &parts->suffix);
}

// The single-sequence template of a TemplateProcessing post-processor: ids before and after "A".
absl::Status ParsePostProcessor(const json& j, Tokenizer::Parts* parts) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const json& p : j.at("processors")) MOE_RETURN_IF_ERROR(ParsePostProcessor(p, parts));
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type != "TemplateProcessing") {
    return absl::UnimplementedError(absl::StrCat("post_processor \"", type, "\" is not supported"));
  }
  bool after_sequence = false;
  for (const json& item : j.at("single")) {
    if (item.contains("Sequence")) {
      after_sequence = true;
      continue;
    }
    const std::string name = item.at("SpecialToken").at("id").get<std::string>();
    const json& special = j.at("special_tokens").at(name);
    for (const json& id : special.at("ids")) {
      MOE_ASSIGN_OR_RETURN(const int32_t token,
                           TokenIdFromJson(id, "post_processor.special_tokens"));
      (after_sequence ? parts->suffix : parts->prefix).push_back(token);
    }
  }
  return absl::OkStatus();
}

// The decoder: ByteLevel, or the SentencePiece-style steps (Replace "▁" → " ", ByteFallback, Fuse,
// Strip of leading spaces after Fuse, Metaspace), which set `sp`.
absl::Status ParseDecoder(const json& j, Tokenizer::Parts::SentencePieceDecoding* sp, bool* fused) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = j.value("type", "");
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "Sequence") {
    for (const json& d : j.at("decoders")) MOE_RETURN_IF_ERROR(ParseDecoder(d, sp, fused));
    return absl::OkStatus();
  }
  if (type == "Replace") {
    const json& pattern = j.at("pattern");
    if (!pattern.contains("String") || j.at("content").get<std::string>() != " ") {
      return absl::UnimplementedError("decoder Replace other than of a string by \" \" is not supported");
    }
    sp->on = true;
    sp->replacement = pattern.at("String").get<std::string>();
    return absl::OkStatus();
  }
  if (type == "Metaspace") {
    sp->on = true;
    sp->replacement = j.value("replacement", "\u2581");
    const std::string scheme = j.contains("prepend_scheme") ? j.at("prepend_scheme").get<std::string>()
                                                            : (j.value("add_prefix_space", true) ? "always" : "never");
    sp->strip_first_token = scheme != "never";
    return absl::OkStatus();
  }
  if (type == "ByteFallback") {
    sp->byte_fallback = true;
    return absl::OkStatus();
  }
  if (type == "Fuse") {
    *fused = true;
    return absl::OkStatus();
  }
  if (type == "Strip") {
    if (j.value("content", " ") != " " || j.value("stop", 0) != 0 || !*fused) {
      return absl::UnimplementedError("decoder Strip other than of leading spaces after Fuse is not supported");
    }
    sp->strip_leading = j.value("start", 0);
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat("decoder \"", type, "\" is not supported"));
}

absl::StatusOr<Tokenizer::Parts> ParseHfTokenizer(const json& j) {
  Tokenizer::Parts parts;
  MOE_ASSIGN_OR_RETURN(parts.normalizer, Normalizer::FromJson(j.value("normalizer", json())));
  MOE_ASSIGN_OR_RETURN(parts.pre_tokenizer, PreTokenizer::FromJson(j.value("pre_tokenizer", json())));
  MOE_RETURN_IF_ERROR(ParsePostProcessor(j.value("post_processor", json()), &parts));
  bool fused = false;
  MOE_RETURN_IF_ERROR(ParseDecoder(j.value("decoder", json()), &parts.sentencepiece, &fused));

  const json& model = j.at("model");
  if (model.value("type", "BPE") != "BPE") {
    return absl::UnimplementedError(absl::StrCat("model type \"", model.value("type", ""),
                                                 "\" is not supported (only BPE)"));
  }
  // Byte-level vocabularies spell bytes in GPT-2's alphabet; SentencePiece-style ones spell text
  // with "▁" for spaces and say so in their decoder.
  const bool byte_level = parts.pre_tokenizer.byte_level();
  if (byte_level == parts.sentencepiece.on) {
    return absl::UnimplementedError(
        byte_level ? "a ByteLevel pre-tokenizer with a SentencePiece-style decoder is not supported"
                   : "a BPE model needs a ByteLevel pre-tokenizer, or a SentencePiece-style decoder "
                     "(Replace \"▁\" or Metaspace, with ByteFallback and Fuse)");
  }
  const bool byte_fallback = model.value("byte_fallback", false);
  if (byte_fallback && byte_level) {
    return absl::UnimplementedError("BPE \"byte_fallback\": true with a ByteLevel vocabulary is not supported");
  }
  if (byte_fallback && !parts.sentencepiece.byte_fallback) {
    return absl::UnimplementedError("BPE \"byte_fallback\": true without a ByteFallback decoder is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model.at(key).is_string() && !model.at(key).get<std::string>().empty()) {
      return absl::UnimplementedError(absl::StrCat("BPE \"", key, "\" is not supported"));
    }
  }
  std::vector<std::string> tokens;
  for (const auto& [text, id_json] : model.at("vocab").items()) {
    MOE_ASSIGN_OR_RETURN(const int32_t id, TokenIdFromJson(id_json, "model.vocab"));
    if (id >= static_cast<int64_t>(tokens.size())) tokens.resize(id + 1);
    tokens[id] = byte_level ? VocabBytes(text) : text;
  }
  std::vector<std::pair<std::string, std::string>> merges;
  const json& merge_list = model.at("merges");
  merges.reserve(merge_list.size());
  for (size_t i = 0; i < merge_list.size(); ++i) {
    const json& m = merge_list[i];
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.merges[", i, "]: \"", s, "\" is not two tokens"));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat("model.merges[", i, "] is not a pair"));
    }
    merges.emplace_back(byte_level ? VocabBytes(left) : left, byte_level ? VocabBytes(right) : right);
  }
  auto bpe = Bpe::FromMerges(std::move(tokens), merges, model.value("ignore_merges", false));
  if (!bpe.ok()) return absl::InvalidArgumentError(absl::StrCat("model: ", bpe.status().message()));
  if (!byte_level) {
    std::optional<int32_t> unk;
    if (model.contains("unk_token") && model.at("unk_token").is_string()) {
      unk = bpe->Find(model.at("unk_token").get<std::string>());
      if (!unk) {
        return absl::InvalidArgumentError(absl::StrCat("model.unk_token \"", model.at("unk_token").get<std::string>(),
                                                       "\" is not in the vocabulary"));
      }
    }
    bpe->UseCharacterSymbols(byte_fallback, unk, model.value("fuse_unk", false));
  }
  parts.bpe = std::move(*bpe);

  std::vector<AddedToken> added;
  for (const json& t : j.value("added_tokens", json::array())) {
    MOE_ASSIGN_OR_RETURN(const int32_t id, TokenIdFromJson(t.at("id"), "added_tokens"));
    AddedToken a = AddedTokenFromJson(t, id, /*special_by_default=*/false);
    if (a.content.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("added_tokens: bad entry ", t.dump()));
    }
    added.push_back(std::move(a));
  }
  parts.added = AddedTokens(std::move(added));
  return parts;
}

absl::StatusOr<Tokenizer::Parts> ParseTiktoken(std::string_view text, const json& config) {
  std::vector<std::string> tokens;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    std::string bytes;
    int64_t rank = 0;
    if (fields.size() != 2 || !absl::Base64Unescape(fields[0], &bytes) || bytes.empty() ||
        !absl::SimpleAtoi(fields[1], &rank) || rank < 0 || rank >= (1 << 24)) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": expected \"<base64 bytes> <rank>\""));
    }
    if (rank >= static_cast<int64_t>(tokens.size())) tokens.resize(rank + 1);
    if (!tokens[rank].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": rank ", rank,
                                                     " given twice"));
    }
    tokens[rank] = std::move(bytes);
  }
  if (tokens.empty()) return absl::InvalidArgumentError("no ranks");
  Tokenizer::Parts parts;
  const auto base = static_cast<int32_t>(tokens.size());
  parts.bpe = Bpe::FromRanks(std::move(tokens));
  MOE_ASSIGN_OR_RETURN(parts.pre_tokenizer, PreTokenizer::FromPattern(kKimiPattern));

  std::vector<AddedToken> added;
  const json decoder = config.value("added_tokens_decoder", json::object());
  for (int32_t id = base; id < base + kKimiReservedSpecialTokens; ++id) {
    const std::string key = std::to_string(id);
    const json entry = decoder.contains(key)
                           ? decoder.at(key)
                           : json{{"content", absl::StrCat("<|reserved_token_", id, "|>")}};
    added.push_back(AddedTokenFromJson(entry, id, /*special_by_default=*/true));
  }
  parts.added = AddedTokens(std::move(added));
  return parts;
}

// Wraps a parse step's error in the file it came from (and turns JSON type errors into Status).
template <typename Fn>
auto InFile(const fs::path& path, Fn fn) -> decltype(fn()) {
  try {
    auto result = fn();
    if (!result.ok()) {
      return absl::Status(result.status().code(),
                          absl::StrCat(path.string(), ": ", result.status().message()));
    }
    return result;
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", e.what()));
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizer(const std::string& dir) {
  const fs::path folder(dir);
  const fs::path config_path = folder / "tokenizer_config.json";
  json config = json::object();
  if (fs::exists(config_path)) {
    MOE_ASSIGN_OR_RETURN(config, ReadJson(config_path));
    if (!config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path.string(), ": not a JSON object"));
    }
  }
  const fs::path hf_path = folder / "tokenizer.json";
  const fs::path tiktoken_path = folder / "tiktoken.model";
  Tokenizer::Parts parts;
  if (fs::exists(hf_path)) {
    MOE_ASSIGN_OR_RETURN(json j, ReadJson(hf_path));
    MOE_ASSIGN_OR_RETURN(parts, InFile(hf_path, [&] { return ParseHfTokenizer(j); }));
    parts.source = hf_path.string();
  } else if (fs::exists(tiktoken_path)) {
    MOE_ASSIGN_OR_RETURN(std::string text, ReadFile(tiktoken_path));
    MOE_ASSIGN_OR_RETURN(parts, InFile(tiktoken_path, [&] { return ParseTiktoken(text, config); }));
    parts.source = tiktoken_path.string();
  } else {
    return absl::NotFoundError(absl::StrCat("no tokenizer in ", dir,
                                            ": expected tokenizer.json or tiktoken.model"));
  }
  MOE_RETURN_IF_ERROR(InFile(config_path, [&]() -> absl::StatusOr<bool> {
                        MOE_RETURN_IF_ERROR(ApplyConfig(config, &parts));
                        return true;
                      }).status());
  // What the post-processor adds must be tokens of the vocabulary.
  for (const std::vector<int32_t>* ids : {&parts.prefix, &parts.suffix}) {
    for (int32_t id : *ids) {
      if (!parts.HasToken(id)) {
        return absl::InvalidArgumentError(absl::StrCat(parts.source, ": post_processor: token id ",
                                                       id, " it adds is not a token of the vocabulary"));
      }
    }
  }
  return std::make_shared<const Tokenizer>(std::move(parts));
}

}  // namespace moe::text
