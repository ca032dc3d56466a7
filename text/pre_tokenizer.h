// The pre-tokenizer: cuts text into the pieces BPE runs on, by a sequence of regex splits. It
// reads HF `tokenizer.json`'s `pre_tokenizer` (Split, ByteLevel, Digits, Metaspace and Sequence
// of them) and tiktoken's single `pat_str`. Metaspace (SentencePiece-style vocabularies) first
// rewrites the text — spaces become "▁", one is prepended — and may split before each "▁".
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "text/regex.h"

namespace moe::text {

class PreTokenizer {
 public:
  // What a split does with the text a match covers (HF's SplitDelimiterBehavior).
  enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };

  // From `tokenizer.json`'s "pre_tokenizer" (null: the whole text is one piece).
  static absl::StatusOr<PreTokenizer> FromJson(const nlohmann::json& json);
  // tiktoken: every match of `pattern` is a piece (and so is every gap between matches).
  static absl::StatusOr<PreTokenizer> FromPattern(std::string_view pattern);

  // Appends the pieces of `text` (views into it, none empty) to `pieces`.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

  // With a Metaspace step: `text` rewritten by it (`at_start`: the text begins the input, which
  // prepend_scheme "first" asks for), to be split next. False without one.
  bool Metaspace(std::string_view text, bool at_start, std::string* out) const;

  // Whether a ByteLevel step is present (the vocabulary is then in the byte-level alphabet).
  bool byte_level() const { return byte_level_; }

 private:
  struct Step {
    Regex regex;
    Behavior behavior;
  };
  absl::Status Add(const nlohmann::json& json);
  absl::Status AddSplit(std::string_view pattern, Behavior behavior);

  struct MetaspaceStep {
    std::string replacement;
    enum class Prepend { kAlways, kFirst, kNever } prepend;
  };
  std::vector<Step> steps_;
  std::optional<MetaspaceStep> metaspace_;
  bool byte_level_ = false;
};

}  // namespace moe::text
