#include "text/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "text/utf8.h"

namespace moe::text {

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
}

void Tokenizer::EncodeOrdinary(std::string_view text, std::vector<int32_t>* ids) const {
  std::string normalized;
  if (!parts_.normalizers.empty()) {
    normalized = std::string(text);
    for (NormalForm form : parts_.normalizers) normalized = Normalize(normalized, form);
    text = normalized;
  }
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
      text, [&](std::string_view stretch) { EncodeOrdinary(stretch, &ids); },
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
  pending_.append(*b);
  const size_t settled = SettledUtf8Prefix(pending_);
  std::string text = LossyUtf8(std::string_view(pending_).substr(0, settled));
  pending_.erase(0, settled);
  return text;
}

std::string StreamDecoder::Finish() {
  std::string text = LossyUtf8(pending_);
  pending_.clear();
  return text;
}

}  // namespace moe::text
