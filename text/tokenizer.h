// Text ↔ token ids for a checkpoint, read from its own files (text/tokenizer_files.h): HF
// `tokenizer.json` byte-level BPE (DeepSeek-V3/R1, Qwen3, Llama 4, OLMo 2, SmolLM3),
// SentencePiece-style BPE (Gemma 3, Llama 2 / Mistral layouts: "▁" for spaces, byte fallback)
// and tiktoken (Kimi K2). Encoding runs added tokens → normalizer → pre-tokenizer → BPE →
// post-processor, as HF tokenizers does; decoding concatenates token bytes and replaces what is
// not UTF-8 (SentencePiece-style: as HF's ByteFallback, Fuse and Strip decoders do).
// Immutable once built: one instance serves every thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "text/added_tokens.h"
#include "text/bpe.h"
#include "text/normalizer.h"
#include "text/pre_tokenizer.h"
#include "text/unicode.h"

namespace moe::text {

class Tokenizer {
 public:
  struct Parts {
    std::string source;                       // the file it was read from, for messages
    Normalizer normalizer;                    // applied to each stretch between added tokens
    PreTokenizer pre_tokenizer;
    Bpe bpe;
    AddedTokens added;
    std::vector<int32_t> prefix, suffix;      // what add_special_tokens puts around the ids
    std::optional<int32_t> bos_id, eos_id;
    // How a SentencePiece-style vocabulary decodes (its decoders: Replace "▁" → " " or
    // Metaspace, ByteFallback, Fuse, Strip). Off for byte-level vocabularies.
    struct SentencePieceDecoding {
      bool on = false;
      std::string replacement = "\u2581";  // read as a space
      bool byte_fallback = false;          // "<0xXX>" tokens are bytes; a run is decoded whole
      int strip_leading = 0;               // Strip: spaces taken off the start of the text
      bool strip_first_token = false;      // Metaspace: the first token's leading space goes
    } sentencepiece;

    // The id of an added token or vocabulary entry spelled exactly `content`.
    std::optional<int32_t> TokenId(std::string_view content) const;
    // Whether `id` is an added token or a vocabulary entry.
    bool HasToken(int32_t id) const;
  };
  explicit Tokenizer(Parts parts);

  // The ids of `text`; with `add_special_tokens`, the post-processor's prefix and suffix (BOS).
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = true) const;

  // The text of `ids` (U+FFFD where their bytes are not UTF-8). Ids without a token decode to
  // nothing, as in HF tokenizers; a negative id is an error naming it.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens = false) const;

  // The bytes token `id` stands for (empty for a special token when skipping them).
  absl::StatusOr<std::string_view> TokenBytes(int32_t id, bool skip_special_tokens = false) const;

  // The id of an added token or vocabulary entry spelled exactly `content`.
  std::optional<int32_t> TokenId(std::string_view content) const { return parts_.TokenId(content); }

  bool IsSpecial(int32_t id) const;
  // One more than the highest id (the model's vocab_size may be larger).
  int32_t size() const { return static_cast<int32_t>(bytes_.size()); }
  std::optional<int32_t> bos_id() const { return parts_.bos_id; }
  std::optional<int32_t> eos_id() const { return parts_.eos_id; }
  const std::string& source() const { return parts_.source; }

 private:
  friend class StreamDecoder;
  // `at_start`: the text begins the input (Metaspace's prepend_scheme "first").
  void EncodeOrdinary(std::string_view text, bool at_start, std::vector<int32_t>* ids) const;
  // SentencePiece-style: the byte a "<0xXX>" token stands for, else -1.
  int ByteValue(int32_t id) const { return id >= 0 && id < size() ? byte_value_[id] : -1; }

  Parts parts_;
  std::vector<std::string> bytes_;  // by id: BPE tokens, then added tokens' content, as text
  std::vector<bool> special_;
  std::vector<int16_t> byte_value_;  // SentencePiece-style byte fallback tokens
};

// Turns a stream of generated ids into text without ever cutting a character: each Push returns
// the text that is settled, holding back the bytes of a character not yet complete. The pieces
// of a stream concatenate to Decode of all its ids.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}
  absl::StatusOr<std::string> Push(int32_t id);
  // The rest at the end of the stream (U+FFFD for a character left unfinished).
  std::string Finish();

 private:
  // SentencePiece-style: the text of `id` after a run of byte tokens it ends, with Strip and
  // Metaspace's first-token rule applied.
  std::string PushPiece(int32_t id);
  std::string TakeRun();
  std::string Strip(std::string text);

  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // byte-level: bytes of an unfinished character; SentencePiece: a byte run
  bool first_ = true;
  int strip_left_ = -1;  // SentencePiece: spaces still to strip off the start (-1: not set yet)
};

}  // namespace moe::text
