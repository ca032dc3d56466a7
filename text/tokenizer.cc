#include "text/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "text/utf8.h"

namespace moe::text {

namespace {

// HF's ByteFallback decoder: a run of byte tokens is its text when it is UTF-8, else one U+FFFD
// per byte.
std::string DecodeByteRun(const std::string& run) {
  if (LossyUtf8(run) == run) return run;
  std::string out;
  for (size_t i = 0; i < run.size(); ++i) out += "\uFFFD";
  return out;
}

// "<0xXX>" → the byte, else -1.
int ParseByteToken(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (char c : t.substr(3, 2)) {
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

}  // namespace

Tokenizer::Tokenizer(Parts parts) : parts_(std::move(parts)) {
  bytes_ = parts_.bpe.tokens();
  for (const AddedToken& t : parts_.added.tokens()) {
    if (t.id >= static_cast<int32_t>(bytes_.size())) bytes_.resize(t.id + 1);
  }
  special_.assign(bytes_.size(), false);
  for (const AddedToken& t : parts_.added.tokens()) {
    bytes_[t.id] = t.content;
    special_[t.id] = t.special;
  }
  byte_value_.assign(bytes_.size(), -1);
  const Parts::SentencePieceDecoding& sp = parts_.sentencepiece;
  if (sp.on) {  // decoders run over every token's string, added tokens' too
    for (size_t id = 0; id < bytes_.size(); ++id) {
      const int b = sp.byte_fallback ? ParseByteToken(bytes_[id]) : -1;
      byte_value_[id] = static_cast<int16_t>(b);
      bytes_[id] = b >= 0 ? std::string(1, static_cast<char>(b)) : ReplaceAll(bytes_[id], sp.replacement, " ");
    }
  }
}

void Tokenizer::EncodeOrdinary(std::string_view text, bool at_start, std::vector<int32_t>* ids) const {
  std::string normalized, rewritten;
  if (!parts_.normalizer.empty()) {
    normalized = parts_.normalizer.Apply(text);
    text = normalized;
  }
  if (parts_.pre_tokenizer.Metaspace(text, at_start, &rewritten)) text = rewritten;
  thread_local std::vector<std::string_view> pieces;
  pieces.clear();
  parts_.pre_tokenizer.Split(text, &pieces);
  for (std::string_view piece : pieces) parts_.bpe.Encode(piece, ids);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids = parts_.prefix;
  parts_.added.Split(
      text, [&](std::string_view stretch) { EncodeOrdinary(stretch, stretch.data() == text.data(), &ids); },
      [&](const AddedToken& token) { ids.push_back(token.id); });
  if (add_special_tokens) ids.insert(ids.end(), parts_.suffix.begin(), parts_.suffix.end());
  return ids;
}

absl::StatusOr<std::string_view> Tokenizer::TokenBytes(int32_t id, bool skip_special_tokens) const {
  if (id < 0) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is negative"));
  // As HF tokenizers decodes them: an id the vocabulary has no token for (the model's vocab_size
  // is often padded past the tokenizer's) stands for nothing.
  if (id >= size() || (skip_special_tokens && special_[id])) return std::string_view();
  return std::string_view(bytes_[id]);
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  if (parts_.sentencepiece.on) {  // one stream, so both spell the same
    StreamDecoder stream(*this, skip_special_tokens);
    std::string text;
    for (int32_t id : ids) {
      auto piece = stream.Push(id);
      if (!piece.ok()) return piece.status();
      text += *piece;
    }
    return text + stream.Finish();
  }
  std::string bytes;
  for (int32_t id : ids) {
    auto b = TokenBytes(id, skip_special_tokens);
    if (!b.ok()) return b.status();
    bytes.append(*b);
  }
  return LossyUtf8(bytes);
}

std::optional<int32_t> Tokenizer::Parts::TokenId(std::string_view content) const {
  for (const AddedToken& t : added.tokens()) {
    if (t.content == content) return t.id;
  }
  return bpe.Find(content);
}

bool Tokenizer::Parts::HasToken(int32_t id) const {
  for (const AddedToken& t : added.tokens()) {
    if (t.id == id) return true;
  }
  return id >= 0 && id < static_cast<int32_t>(bpe.tokens().size()) && !bpe.tokens()[id].empty();
}

bool Tokenizer::IsSpecial(int32_t id) const { return id >= 0 && id < size() && special_[id]; }

absl::StatusOr<std::string> StreamDecoder::Push(int32_t id) {
  auto b = tokenizer_.TokenBytes(id, skip_special_tokens_);
  if (!b.ok()) return b.status();
  if (tokenizer_.parts_.sentencepiece.on) {
    if (id >= tokenizer_.size() || (skip_special_tokens_ && tokenizer_.IsSpecial(id))) return std::string();
    return PushPiece(id);
  }
  pending_.append(*b);
  const size_t settled = SettledUtf8Prefix(pending_);
  std::string text = LossyUtf8(std::string_view(pending_).substr(0, settled));
  pending_.erase(0, settled);
  return text;
}

std::string StreamDecoder::TakeRun() {
  std::string text = pending_.empty() ? std::string() : DecodeByteRun(pending_);
  pending_.clear();
  return text;
}

std::string StreamDecoder::Strip(std::string text) {
  if (strip_left_ < 0) strip_left_ = tokenizer_.parts_.sentencepiece.strip_leading;
  size_t cut = 0;
  while (strip_left_ > 0 && cut < text.size()) {
    if (text[cut] != ' ') {
      strip_left_ = 0;
      break;
    }
    ++cut;
    --strip_left_;
  }
  return text.substr(cut);
}

std::string StreamDecoder::PushPiece(int32_t id) {
  const int byte = tokenizer_.ByteValue(id);
  const bool first = first_;
  first_ = false;
  if (byte >= 0) {  // held until the run ends: HF decodes a run as a whole
    pending_.push_back(static_cast<char>(byte));
    return std::string();
  }
  std::string token = tokenizer_.bytes_[id];
  if (first && tokenizer_.parts_.sentencepiece.strip_first_token && !token.empty() && token[0] == ' ') {
    token.erase(0, 1);
  }
  return Strip(TakeRun() + token);
}

std::string StreamDecoder::Finish() {
  if (tokenizer_.parts_.sentencepiece.on) return Strip(TakeRun());
  std::string text = LossyUtf8(pending_);
  pending_.clear();
  return text;
}

}  // namespace moe::text
