// A Jinja template, parsed once and rendered many times (from any thread), with Jinja2's
// semantics as transformers' `apply_chat_template` configures them: undefined variables print
// as nothing and fail when used, `{% set %}` inside a loop stays in the loop (use namespace()),
// macros see their arguments and the template's top level. The supported language is the part
// chat templates use (docs/chat-templates.md lists it); anything else is an error naming the
// line, never a silently different prompt.
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "text/jinja/ast.h"
#include "text/jinja/value.h"

namespace moe::jinja {

class Template {
 public:
  static absl::StatusOr<Template> Parse(absl::string_view source);

  // The template rendered with `variables` as its globals (beside range, namespace, ...).
  absl::StatusOr<std::string> Render(const Dict& variables) const;

 private:
  explicit Template(std::shared_ptr<const Body> body) : body_(std::move(body)) {}
  std::shared_ptr<const Body> body_;
};

}  // namespace moe::jinja
