// What a Jinja template can call: Jinja2's filters and tests, the operators, the methods of
// Python's str, dict and list that chat templates use (`content.split('</think>')`,
// `message.get('name')`), and the globals transformers renders with (`range`, `namespace`,
// `raise_exception`, `strftime_now`, `dict`). Mutating methods (`list.append`) are refused, as
// in transformers' immutable sandbox. Errors carry no line: the interpreter adds it.
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "text/jinja/value.h"

namespace moe::jinja {

absl::StatusOr<Value> ApplyFilter(absl::string_view name, const Value& value, Args& args);
absl::StatusOr<bool> ApplyTest(absl::string_view name, const Value& value, Args& args);
// object.name(args); NotFound when the type has no such method.
absl::StatusOr<Value> CallMethod(const Value& object, absl::string_view name, Args& args);
// a op b for + - * / // % ** ~ == != < <= > >= in, "not in".
absl::StatusOr<Value> BinaryOp(absl::string_view op, const Value& a, const Value& b);
// Python's x[start:stop:step] of a string or list (absent bounds are undefined or none).
absl::StatusOr<Value> Slice(const Value& x, const Value& start, const Value& stop, const Value& step);
// x[key]: a dict's key, a list's or string's index (negative from the end); undefined if absent.
Value Item(const Value& x, const Value& key);
// The items a for loop visits: a list's items, a dict's keys, a string's characters.
absl::StatusOr<List> Iterate(const Value& x);
Dict Globals();

}  // namespace moe::jinja
