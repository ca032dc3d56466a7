#include "text/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"

namespace moe::text {

struct Regex::Code {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Code() { pcre2_code_free(code); }
};

absl::StatusOr<Regex> Regex::Compile(std::string_view pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  auto code = std::make_shared<Code>();
  code->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset,
                             nullptr);
  if (code->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("regex \"", std::string(pattern), "\" at offset ", offset,
                                                   ": ", reinterpret_cast<char*>(message)));
  }
  code->jit = pcre2_jit_compile(code->code, PCRE2_JIT_COMPLETE) == 0;
  return Regex(std::string(pattern), std::move(code));
}

void Regex::ForEachMatch(std::string_view text,
                         absl::FunctionRef<void(size_t begin, size_t end)> on_match) const {
  // Match data per call: the compiled code is shared between threads, match data is not.
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
      pcre2_match_data_create_from_pattern(code_->code, nullptr), &pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  bool jit = code_->jit;
  while (start < text.size()) {
    int rc = pcre2_match(code_->code, subject, text.size(), start, jit ? 0 : PCRE2_NO_JIT,
                         data.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // a very long match: the interpreter uses the heap
      jit = false;
      continue;
    }
    if (rc < 0) return;  // PCRE2_ERROR_NOMATCH (or a resource limit: the rest is one gap)
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
    const size_t begin = ovector[0], end = ovector[1];
    if (end > begin) {
      on_match(begin, end);
      start = end;
    } else {
      // An empty match: step over one character (a UTF-8 lead byte and its continuations).
      start = begin + 1;
      while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
        ++start;
      }
    }
  }
}

}  // namespace moe::text
