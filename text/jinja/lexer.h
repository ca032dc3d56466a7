// Splits a Jinja template into text and the tokens inside `{{ }}` and `{% %}`, applying the
// whitespace rules of the environment transformers renders chat templates in: `trim_blocks`
// (the newline after a block or comment tag goes), `lstrip_blocks` (spaces and tabs before one on
// its line go), the `-` and `+` markers, and no trailing newline at the end of the source.
// Comments `{# #}` are dropped.
#pragma once

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace moe::jinja {

struct Token {
  enum class Kind {
    kText,        // text between tags
    kPrintBegin,  // {{
    kPrintEnd,    // }}
    kBlockBegin,  // {%
    kBlockEnd,    // %}
    kName,
    kString,      // the literal's value, escapes resolved
    kInt,
    kFloat,
    kOperator,    // + - * / // % ** ~ == != < <= > >= = ( ) [ ] { } , . : |
    kEnd,
  };
  Kind kind;
  std::string text;
  int line;
};

absl::StatusOr<std::vector<Token>> Lex(absl::string_view source);

}  // namespace moe::jinja
