// The values a Jinja template computes with, with Python's semantics where Jinja defers to
// Python (chat templates are written against Jinja2 on CPython): truthiness, `==`, `str()` and
// `repr()` of numbers, lists and dicts, and `json.dumps` for the `tojson` filter. Dicts keep
// insertion order, as Python's do, so `tools | tojson` prints a schema in the order it came.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace moe::jinja {

class Value;
class Dict;
struct Args;
using List = std::vector<Value>;
using Function = std::function<absl::StatusOr<Value>(Args&)>;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };

  Value() = default;  // undefined
  static Value Undefined(std::string name) {
    Value v;
    v.str_ = std::move(name);
    return v;
  }
  static Value None() { return Value(Kind::kNone); }
  Value(bool b) : kind_(Kind::kBool), int_(b) {}            // NOLINT(runtime/explicit)
  Value(int64_t i) : kind_(Kind::kInt), int_(i) {}          // NOLINT(runtime/explicit)
  Value(int i) : Value(static_cast<int64_t>(i)) {}          // NOLINT(runtime/explicit)
  Value(double f) : kind_(Kind::kFloat), float_(f) {}       // NOLINT(runtime/explicit)
  Value(std::string s) : kind_(Kind::kString), str_(std::move(s)) {}  // NOLINT(runtime/explicit)
  Value(const char* s) : Value(std::string(s)) {}           // NOLINT(runtime/explicit)
  Value(List list)                                          // NOLINT(runtime/explicit)
      : kind_(Kind::kList), list_(std::make_shared<List>(std::move(list))) {}
  Value(Dict dict);                                         // NOLINT(runtime/explicit)
  // A tuple: a list that prints as Python prints a tuple, `(1, 2)` and `(1,)`.
  static Value Tuple(List list) {
    Value v(std::move(list));
    v.tuple_ = true;
    return v;
  }
  // A namespace() object: a dict whose attributes `{% set ns.x = ... %}` may assign.
  static Value Namespace(Dict dict);
  static Value Func(Function f) {
    Value v(Kind::kFunction);
    v.function_ = std::make_shared<Function>(std::move(f));
    return v;
  }
  static Value FromJson(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }  // Python: bool ⊂ int
  bool is_number() const { return is_int() || kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return namespace_; }
  bool is_tuple() const { return tuple_; }
  bool is_function() const { return kind_ == Kind::kFunction; }

  int64_t as_int() const { return int_; }
  double as_float() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return str_; }
  // For an undefined value: the name it was looked up under, for messages.
  const std::string& undefined_name() const { return str_; }
  const List& as_list() const { return *list_; }
  const Dict& as_dict() const { return *dict_; }
  Dict& mutable_dict() const { return *dict_; }  // namespaces only: shared by every copy
  const Function& as_function() const { return *function_; }

  bool Truthy() const;
  // Python's str(): what {{ value }} prints ("" for undefined).
  std::string Str() const;
  // Python's repr(), as str() of a container prints its items.
  std::string Repr() const;
  // Python's json.dumps(value, ensure_ascii=False, indent=indent) (transformers' `tojson`).
  absl::StatusOr<std::string> ToJson(std::optional<int> indent) const;
  // The type's name as Python says it, for messages.
  absl::string_view TypeName() const;

  friend bool operator==(const Value& a, const Value& b);
  // Python's <, for numbers, strings and lists; an error for anything else.
  static absl::StatusOr<bool> Less(const Value& a, const Value& b);

 private:
  explicit Value(Kind kind) : kind_(kind) {}

  Kind kind_ = Kind::kUndefined;
  bool namespace_ = false;
  bool tuple_ = false;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> function_;
};

// A string's code points (Python indexes, slices and measures strings by them) and back.
std::u32string CodePoints(absl::string_view utf8);
std::string FromCodePoints(std::u32string_view cps);
// Python's str.isspace() for one code point.
bool PythonSpace(char32_t c);

// Insertion-ordered string-keyed map (chat-template dicts are small: a linear search is fastest).
class Dict {
 public:
  const Value* Find(absl::string_view key) const;
  void Set(std::string key, Value value);
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }
  size_t size() const { return items_.size(); }

 private:
  std::vector<std::pair<std::string, Value>> items_;
};

// Arguments of a call: positional, then keyword.
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

inline Value::Value(Dict dict) : kind_(Kind::kDict), dict_(std::make_shared<Dict>(std::move(dict))) {}
inline Value Value::Namespace(Dict dict) {
  Value v(std::move(dict));
  v.namespace_ = true;
  return v;
}

// Python's repr() of a float: the shortest digits that read back, "1.0", "1e-05", "1.5e+16".
std::string PythonFloatRepr(double f);

}  // namespace moe::jinja
