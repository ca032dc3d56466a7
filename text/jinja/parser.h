// Parses the tokens of a Jinja template into statements, with Jinja2's operator precedence:
// `x if c else y` < or < and < not < comparisons and `in` < + - < ~ < * / // % < ** < unary
// minus < filters, tests, calls, attributes and subscripts. What chat templates do not use
// (extends, include, import, call blocks, raw) is an error naming the tag and line.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "text/jinja/ast.h"
#include "text/jinja/lexer.h"

namespace moe::jinja {

absl::StatusOr<Body> Parse(const std::vector<Token>& tokens);

}  // namespace moe::jinja
