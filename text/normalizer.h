// HF tokenizers' normalizers as the supported `tokenizer.json` files use them: the Unicode normal
// forms (NFC, NFD, NFKC, NFKD, by utf8proc), Replace of a literal string (SentencePiece-style
// vocabularies spell spaces "▁"), Prepend (to a non-empty text), and Sequence of those. Applied to
// each stretch of text between added tokens, as HF applies them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "text/unicode.h"

namespace moe::text {

class Normalizer {
 public:
  // From `tokenizer.json`'s "normalizer" (null: none). Others are UNIMPLEMENTED, naming the type.
  static absl::StatusOr<Normalizer> FromJson(const nlohmann::json& json);

  bool empty() const { return steps_.empty(); }
  std::string Apply(std::string_view text) const;

 private:
  struct Step {
    enum class Kind { kForm, kReplace, kPrepend };
    Kind kind = Kind::kForm;
    NormalForm form = NormalForm::kNfc;
    std::string from, to;  // kReplace: every `from` becomes `to`; kPrepend: `to` goes first
  };
  absl::Status Add(const nlohmann::json& json);

  std::vector<Step> steps_;
};

// `text` with every occurrence of `from` (non-empty) replaced by `to`.
std::string ReplaceAll(std::string_view text, std::string_view from, std::string_view to);

}  // namespace moe::text
