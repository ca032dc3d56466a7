#include "text/jinja/builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "text/utf8.h"
#include "utf8proc.h"

namespace moe::jinja {
namespace {

absl::Status TypeError(absl::string_view what) { return absl::InvalidArgumentError(what); }

// Integers are int64_t here where Python's are unbounded: a result outside that range is this
// error.
absl::Status IntegerOverflow() {
  return absl::InvalidArgumentError("integer overflow (integers are 64-bit here)");
}

// Python's int(f) for a finite float, truncating toward zero.
absl::StatusOr<int64_t> FloatToInt(double f) {
  if (std::isnan(f)) return TypeError("cannot convert float NaN to integer");
  if (!(f >= -0x1p63 && f < 0x1p63)) return IntegerOverflow();
  return static_cast<int64_t>(f);
}

// The argument at position `pos` or keyword `name`; null when not given.
const Value* Arg(const Args& a, size_t pos, absl::string_view name) {
  if (pos < a.positional.size()) return &a.positional[pos];
  for (const auto& [k, v] : a.keyword) {
    if (k == name) return &v;
  }
  return nullptr;
}
Value ArgOr(const Args& a, size_t pos, absl::string_view name, Value fallback) {
  const Value* v = Arg(a, pos, name);
  return v == nullptr ? std::move(fallback) : *v;
}

absl::StatusOr<std::string> StringArg(const Args& a, size_t pos, absl::string_view name,
                                      absl::string_view what) {
  const Value* v = Arg(a, pos, name);
  if (v == nullptr || !v->is_string()) {
    return TypeError(absl::StrCat(what, ": expected a string argument '", name, "'"));
  }
  return v->as_string();
}

absl::Status NeedString(const Value& v, absl::string_view what) {
  if (v.is_string()) return absl::OkStatus();
  if (v.is_undefined()) return TypeError(absl::StrCat("'", v.undefined_name(), "' is undefined"));
  return TypeError(absl::StrCat(what, ": expected a string, got ", v.TypeName()));
}

std::u32string MapCase(std::u32string s, bool upper) {
  for (char32_t& c : s) {
    c = static_cast<char32_t>(upper ? utf8proc_toupper(static_cast<utf8proc_int32_t>(c))
                                    : utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
  }
  return s;
}

bool IsLetter(char32_t c) {
  const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}

std::string Title(absl::string_view s) {
  std::u32string cps = CodePoints(s);
  bool previous_cased = false;
  for (char32_t& c : cps) {
    c = static_cast<char32_t>(previous_cased ? utf8proc_tolower(static_cast<utf8proc_int32_t>(c))
                                             : utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
    previous_cased = IsLetter(c);
  }
  return FromCodePoints(cps);
}

std::string Capitalize(absl::string_view s) {
  std::u32string cps = MapCase(CodePoints(s), false);
  if (!cps.empty()) cps[0] = static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(cps[0])));
  return FromCodePoints(cps);
}

// Python's str.strip/lstrip/rstrip(chars): whitespace when `chars` is none.
std::string Strip(absl::string_view s, const Value* chars, bool left, bool right) {
  const std::u32string cps = CodePoints(s);
  const std::u32string set = chars != nullptr && chars->is_string() ? CodePoints(chars->as_string())
                                                                     : std::u32string();
  const bool whitespace = chars == nullptr || !chars->is_string();
  auto drop = [&](char32_t c) { return whitespace ? PythonSpace(c) : set.find(c) != std::u32string::npos; };
  size_t b = 0, e = cps.size();
  if (left) while (b < e && drop(cps[b])) ++b;
  if (right) while (e > b && drop(cps[e - 1])) --e;
  return FromCodePoints(std::u32string_view(cps).substr(b, e - b));
}

// Python's str.split / str.rsplit.
absl::StatusOr<List> Split(const std::string& s, const Value* sep, int64_t maxsplit, bool from_right) {
  List out;
  if (sep != nullptr && !sep->is_none() && !sep->is_undefined()) {
    if (!sep->is_string()) return TypeError("split: the separator must be a string or None");
    const std::string& d = sep->as_string();
    if (d.empty()) return TypeError("split: empty separator");
    if (!from_right) {
      size_t start = 0;
      for (size_t at; (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) &&
                      (at = s.find(d, start)) != std::string::npos;
           start = at + d.size()) {
        out.push_back(Value(s.substr(start, at - start)));
      }
      out.push_back(Value(s.substr(start)));
      return out;
    }
    size_t end = s.size();
    std::vector<std::string> parts;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      if (end < d.size()) break;
      const size_t at = s.rfind(d, end - d.size());
      if (at == std::string::npos) break;
      parts.push_back(s.substr(at + d.size(), end - at - d.size()));
      end = at;
    }
    parts.push_back(s.substr(0, end));
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) out.push_back(Value(*it));
    return out;
  }
  // Runs of whitespace; a remainder keeps its whitespace on the far side.
  const std::u32string cps = CodePoints(s);
  std::vector<std::u32string> parts;
  if (!from_right) {
    size_t i = 0;
    while (true) {
      while (i < cps.size() && PythonSpace(cps[i])) ++i;
      if (i == cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        parts.push_back(cps.substr(i));
        break;
      }
      size_t j = i;
      while (j < cps.size() && !PythonSpace(cps[j])) ++j;
      parts.push_back(cps.substr(i, j - i));
      i = j;
    }
  } else {
    size_t i = cps.size();
    while (true) {
      while (i > 0 && PythonSpace(cps[i - 1])) --i;
      if (i == 0) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        parts.push_back(cps.substr(0, i));
        break;
      }
      size_t j = i;
      while (j > 0 && !PythonSpace(cps[j - 1])) --j;
      parts.push_back(cps.substr(j, i - j));
      i = j;
    }
    std::reverse(parts.begin(), parts.end());
  }
  for (const auto& p : parts) out.push_back(Value(FromCodePoints(p)));
  return out;
}

// Python's str.splitlines() (line boundaries dropped).
std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<std::string> lines;
  const std::u32string cps = CodePoints(s);
  size_t start = 0;
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    const bool boundary = c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1e) ||
                          c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!boundary) continue;
    lines.push_back(FromCodePoints(std::u32string_view(cps).substr(start, i - start)));
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    start = i + 1;
  }
  if (start < cps.size()) lines.push_back(FromCodePoints(std::u32string_view(cps).substr(start)));
  return lines;
}

absl::StatusOr<bool> Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined: return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        return TypeError(absl::StrCat("'in <string>' requires string as left operand, not ", item.TypeName()));
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::kList:
      return std::find(container.as_list().begin(), container.as_list().end(), item) !=
             container.as_list().end();
    case Value::Kind::kDict:
      return item.is_string() && container.as_dict().Find(item.as_string()) != nullptr;
    default:
      return TypeError(absl::StrCat("argument of type '", container.TypeName(), "' is not iterable"));
  }
}

absl::Status Undefined(const Value& v) {
  return TypeError(absl::StrCat("'", v.undefined_name(), "' is undefined"));
}

absl::StatusOr<Value> Arithmetic(absl::string_view op, const Value& a, const Value& b) {
  if (a.is_undefined()) return Undefined(a);
  if (b.is_undefined()) return Undefined(b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list()) {
      if (a.is_tuple() != b.is_tuple()) return TypeError("can only concatenate a list to a list, a tuple to a tuple");
      List out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      return a.is_tuple() ? Value::Tuple(std::move(out)) : Value(std::move(out));
    }
  }
  if (op == "*" && (a.is_string() || a.is_list() || b.is_string() || b.is_list())) {
    const Value& seq = a.is_int() ? b : a;
    const Value& count = a.is_int() ? a : b;
    if (count.is_int() && (seq.is_string() || seq.is_list())) {
      const int64_t n = std::max<int64_t>(0, count.as_int());
      const size_t size = seq.is_string() ? seq.as_string().size() : seq.as_list().size();
      if (size * static_cast<size_t>(n) > (size_t{1} << 24)) return TypeError("a repeated sequence is too long");
      if (seq.is_string()) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq.as_string();
        return Value(std::move(out));
      }
      List out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.as_list().begin(), seq.as_list().end());
      return Value(std::move(out));
    }
  }
  if (op == "%" && a.is_string()) {  // printf-style formatting: %s, %d, %r and %%
    const List args = b.is_list() ? b.as_list() : List{b};
    std::string out;
    size_t next = 0;
    const std::string& f = a.as_string();
    for (size_t i = 0; i < f.size(); ++i) {
      if (f[i] != '%') {
        out += f[i];
        continue;
      }
      if (++i == f.size()) return TypeError("incomplete format");
      if (f[i] == '%') {
        out += '%';
        continue;
      }
      if (next == args.size()) return TypeError("not enough arguments for format string");
      const Value& arg = args[next++];
      if (f[i] == 's') {
        out += arg.Str();
      } else if (f[i] == 'r') {
        out += arg.Repr();
      } else if (f[i] == 'd' || f[i] == 'i') {
        if (!arg.is_number()) return TypeError("%d format: a number is required");
        if (arg.is_int()) {
          out += absl::StrCat(arg.as_int());
        } else {
          MOE_ASSIGN_OR_RETURN(const int64_t i, FloatToInt(arg.as_float()));
          out += absl::StrCat(i);
        }
      } else {
        return TypeError(absl::StrCat("unsupported format character '", std::string(1, f[i]), "'"));
      }
    }
    if (next != args.size()) return TypeError("not all arguments converted during string formatting");
    return Value(std::move(out));
  }
  if (op == "+" && (a.is_string() || a.is_list()) && !b.is_number()) {  // Python's wording
    return TypeError(absl::StrCat("can only concatenate ", a.TypeName(), " (not \"", b.TypeName(),
                                  "\") to ", a.TypeName()));
  }
  if (!a.is_number() || !b.is_number()) {
    return TypeError(absl::StrCat("unsupported operand type(s) for ", op, ": '", a.TypeName(), "' and '",
                                  b.TypeName(), "'"));
  }
  const bool ints = a.is_int() && b.is_int();
  if (op == "/") {
    if (b.as_float() == 0) return TypeError("division by zero");
    return Value(a.as_float() / b.as_float());
  }
  if (ints) {
    const int64_t x = a.as_int(), y = b.as_int();
    int64_t r = 0;
    if (op == "+" && !__builtin_add_overflow(x, y, &r)) return Value(r);
    if (op == "-" && !__builtin_sub_overflow(x, y, &r)) return Value(r);
    if (op == "*" && !__builtin_mul_overflow(x, y, &r)) return Value(r);
    if (op == "//" || op == "%") {
      if (y == 0) return TypeError("integer division or modulo by zero");
      if (y == -1) {  // x / -1 overflows for the smallest x
        if (op == "%") return Value(int64_t{0});
        if (__builtin_sub_overflow(int64_t{0}, x, &r)) return IntegerOverflow();
        return Value(r);
      }
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return Value(op == "//" ? q : m);
    }
    if (op == "**" &&
        y >= 0) {  // by squaring: a base squared past the range means the result is past it too
      int64_t p = 1, base = x;
      for (int64_t e = y; e > 0; e >>= 1) {
        if ((e & 1) != 0 && __builtin_mul_overflow(p, base, &p)) return IntegerOverflow();
        if (e > 1 && __builtin_mul_overflow(base, base, &base)) return IntegerOverflow();
      }
      return Value(p);
    }
    if (op != "**") return IntegerOverflow();
  }
  const double x = a.as_float(), y = b.as_float();
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "**") return Value(std::pow(x, y));
  if (y == 0) return TypeError("float division by zero");
  if (op == "//") return Value(std::floor(x / y));
  double m = std::fmod(x, y);
  if (m != 0 && ((m < 0) != (y < 0))) m += y;
  return Value(m);  // "%"
}

// Jinja's attribute lookup for filters that take one ("a.b" goes down a path; "0" is an index).
Value Attribute(const Value& x, absl::string_view path) {
  Value v = x;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    int64_t index = 0;
    v = absl::SimpleAtoi(part, &index) ? Item(v, Value(index)) : Item(v, Value(std::string(part)));
  }
  return v;
}

absl::StatusOr<Value> Sorted(const Value& value, const Args& args) {
  MOE_ASSIGN_OR_RETURN(List items, Iterate(value));
  const bool reverse = ArgOr(args, 0, "reverse", Value(false)).Truthy();
  const Value attribute = ArgOr(args, 2, "attribute", Value::None());
  auto key = [&](const Value& v) {
    Value k = attribute.is_string() ? Attribute(v, attribute.as_string()) : v;
    if (k.is_string() && !ArgOr(args, 1, "case_sensitive", Value(false)).Truthy()) {
      k = Value(FromCodePoints(MapCase(CodePoints(k.as_string()), false)));
    }
    return k;
  };
  absl::Status error;
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    absl::StatusOr<bool> less = reverse ? Value::Less(key(b), key(a)) : Value::Less(key(a), key(b));
    if (!less.ok()) {
      error = less.status();
      return false;
    }
    return *less;
  });
  if (!error.ok()) return error;
  return Value(std::move(items));
}

// select / reject / selectattr / rejectattr: the items for which a test (or truthiness) holds.
absl::StatusOr<Value> Select(const Value& value, Args& args, bool by_attribute, bool keep) {
  MOE_ASSIGN_OR_RETURN(List items, Iterate(value));
  size_t at = 0;
  std::string attribute;
  if (by_attribute) {
    if (args.positional.empty() || !args.positional[0].is_string()) {
      return TypeError("selectattr/rejectattr: expected an attribute name");
    }
    attribute = args.positional[0].as_string();
    at = 1;
  }
  std::string test;
  Args test_args;
  if (at < args.positional.size()) {
    if (!args.positional[at].is_string()) return TypeError("select: the test must be named by a string");
    test = args.positional[at].as_string();
    test_args.positional.assign(args.positional.begin() + static_cast<long>(at) + 1, args.positional.end());
  }
  List out;
  for (const Value& item : items) {
    const Value subject = by_attribute ? Attribute(item, attribute) : item;
    bool pass = subject.Truthy();
    if (!test.empty()) {
      Args copy = test_args;
      MOE_ASSIGN_OR_RETURN(pass, ApplyTest(test, subject, copy));
    }
    if (pass == keep) out.push_back(item);
  }
  return Value(std::move(out));
}

absl::StatusOr<Value> Map(const Value& value, Args& args) {
  MOE_ASSIGN_OR_RETURN(List items, Iterate(value));
  List out;
  if (const Value* attribute = Arg(args, 99, "attribute"); attribute != nullptr) {
    if (!attribute->is_string()) return TypeError("map: attribute must be a string");
    const Value fallback = ArgOr(args, 99, "default", Value());
    for (const Value& item : items) {
      Value v = Attribute(item, attribute->as_string());
      out.push_back(v.is_undefined() && !fallback.is_undefined() ? fallback : v);
    }
    return Value(std::move(out));
  }
  if (args.positional.empty() || !args.positional[0].is_string()) {
    return TypeError("map: expected a filter name or attribute=");
  }
  const std::string filter = args.positional[0].as_string();
  for (const Value& item : items) {
    Args rest;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.keyword = args.keyword;
    MOE_ASSIGN_OR_RETURN(Value v, ApplyFilter(filter, item, rest));
    out.push_back(std::move(v));
  }
  return Value(std::move(out));
}

absl::StatusOr<Value> Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return Value(0);
    case Value::Kind::kString: return Value(static_cast<int64_t>(CodePoints(v.as_string()).size()));
    case Value::Kind::kList: return Value(static_cast<int64_t>(v.as_list().size()));
    case Value::Kind::kDict: return Value(static_cast<int64_t>(v.as_dict().size()));
    default: return TypeError(absl::StrCat("object of type '", v.TypeName(), "' has no len()"));
  }
}

absl::StatusOr<Value> Indent(const Value& value, const Args& args) {
  MOE_RETURN_IF_ERROR(NeedString(value, "indent"));
  const Value width = ArgOr(args, 0, "width", Value(4));
  const std::string pad = width.is_string() ? width.as_string()
                                            : std::string(static_cast<size_t>(std::max<int64_t>(0, width.as_int())), ' ');
  const bool first = ArgOr(args, 1, "first", Value(false)).Truthy();
  const bool blank = ArgOr(args, 2, "blank", Value(false)).Truthy();
  std::vector<std::string> lines = SplitLines(value.as_string() + "\n");
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += "\n";
    if (i > 0 && (blank || !lines[i].empty())) out += pad;
    out += lines[i];
  }
  return Value(first ? pad + out : out);
}

absl::StatusOr<Value> ToInt(const Value& v, const Value& fallback) {
  if (v.is_int()) return Value(v.as_int());
  if (v.kind() == Value::Kind::kFloat) {
    if (std::isnan(v.as_float())) return fallback;
    MOE_ASSIGN_OR_RETURN(const int64_t i, FloatToInt(v.as_float()));
    return Value(i);
  }
  if (v.is_string()) {
    int64_t i = 0;
    double f = 0;
    const absl::string_view s = absl::StripAsciiWhitespace(v.as_string());
    if (absl::SimpleAtoi(s, &i)) return Value(i);
    if (absl::SimpleAtod(s, &f) && !std::isnan(f)) {
      MOE_ASSIGN_OR_RETURN(const int64_t n, FloatToInt(f));
      return Value(n);
    }
  }
  return fallback;
}

absl::StatusOr<Value> ToFloat(const Value& v, const Value& fallback) {
  if (v.is_number()) return Value(v.as_float());
  double f = 0;
  if (v.is_string() && absl::SimpleAtod(absl::StripAsciiWhitespace(v.as_string()), &f)) return Value(f);
  return fallback;
}

std::string HtmlEscape(absl::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Python's str.replace(old, new, count=-1) (Jinja's replace filter is the same).
absl::StatusOr<Value> Replace(const std::string& s, const Args& args) {
  MOE_ASSIGN_OR_RETURN(std::string from, StringArg(args, 0, "old", "replace"));
  MOE_ASSIGN_OR_RETURN(std::string to, StringArg(args, 1, "new", "replace"));
  const Value count = ArgOr(args, 2, "count", Value(-1));
  int64_t left = count.is_int() ? count.as_int() : -1;
  std::string out;
  if (from.empty()) {  // Python inserts `new` around every character
    for (char32_t c : CodePoints(s)) {
      if (left != 0) {
        out += to;
        --left;
      }
      text::AppendUtf8(c, &out);
    }
    if (left != 0) out += to;
    return Value(std::move(out));
  }
  size_t start = 0;
  for (size_t at; left != 0 && (at = s.find(from, start)) != std::string::npos;
       start = at + from.size(), --left) {
    out.append(s, start, at - start);
    out += to;
  }
  out.append(s, start);
  return Value(std::move(out));
}

absl::StatusOr<Value> StringMethod(const std::string& s, absl::string_view name, Args& args) {
  if (name == "startswith" || name == "endswith") {
    const Value* what = Arg(args, 0, "prefix");
    if (what == nullptr) return TypeError(absl::StrCat(name, ": an argument is required"));
    const List options = what->is_list() ? what->as_list() : List{*what};
    for (const Value& o : options) {
      if (!o.is_string()) return TypeError(absl::StrCat(name, ": expected a string or a tuple of strings"));
      if (name == "startswith" ? absl::StartsWith(s, o.as_string()) : absl::EndsWith(s, o.as_string())) {
        return Value(true);
      }
    }
    return Value(false);
  }
  if (name == "split" || name == "rsplit") {
    const Value maxsplit = ArgOr(args, 1, "maxsplit", Value(-1));
    if (!maxsplit.is_int()) return TypeError("split: maxsplit must be an integer");
    MOE_ASSIGN_OR_RETURN(List parts, Split(s, Arg(args, 0, "sep"), maxsplit.as_int(), name == "rsplit"));
    return Value(std::move(parts));
  }
  if (name == "strip") return Value(Strip(s, Arg(args, 0, "chars"), true, true));
  if (name == "lstrip") return Value(Strip(s, Arg(args, 0, "chars"), true, false));
  if (name == "rstrip") return Value(Strip(s, Arg(args, 0, "chars"), false, true));
  if (name == "upper") return Value(FromCodePoints(MapCase(CodePoints(s), true)));
  if (name == "lower") return Value(FromCodePoints(MapCase(CodePoints(s), false)));
  if (name == "title") return Value(Title(s));
  if (name == "capitalize") return Value(Capitalize(s));
  if (name == "replace") return Replace(s, args);
  if (name == "find" || name == "rfind" || name == "count" || name == "index") {
    MOE_ASSIGN_OR_RETURN(std::string sub, StringArg(args, 0, "sub", name));
    if (name == "count") {
      if (sub.empty()) return Value(static_cast<int64_t>(CodePoints(s).size()) + 1);
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value(n);
    }
    const size_t at = name == "rfind" ? s.rfind(sub) : s.find(sub);
    if (at == std::string::npos) {
      if (name == "index") return TypeError("substring not found");
      return Value(-1);
    }
    return Value(static_cast<int64_t>(CodePoints(absl::string_view(s).substr(0, at)).size()));
  }
  if (name == "join") {
    const Value* items = Arg(args, 0, "iterable");
    if (items == nullptr) return TypeError("join: an argument is required");
    MOE_ASSIGN_OR_RETURN(List list, Iterate(*items));
    std::string out;
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].is_string()) return TypeError("join: expected strings");
      if (i) out += s;
      out += list[i].as_string();
    }
    return Value(std::move(out));
  }
  if (name == "splitlines") {
    List out;
    for (std::string& line : SplitLines(s)) out.push_back(Value(std::move(line)));
    return Value(std::move(out));
  }
  if (name == "isspace" || name == "isdigit" || name == "isalpha" || name == "isalnum") {
    const std::u32string cps = CodePoints(s);
    if (cps.empty()) return Value(false);
    for (char32_t c : cps) {
      const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
      const bool digit = cat == UTF8PROC_CATEGORY_ND;
      const bool ok = name == "isspace" ? PythonSpace(c) : name == "isdigit" ? digit
                      : name == "isalpha" ? IsLetter(c) : (digit || IsLetter(c));
      if (!ok) return Value(false);
    }
    return Value(true);
  }
  return absl::NotFoundError(name);
}

}  // namespace

Value Item(const Value& x, const Value& key) {
  if (x.is_dict()) {
    if (!key.is_string()) return Value::Undefined(key.Str());
    const Value* v = x.as_dict().Find(key.as_string());
    return v == nullptr ? Value::Undefined(key.as_string()) : *v;
  }
  if ((x.is_list() || x.is_string()) && key.is_int()) {
    if (x.is_list()) {
      const int64_t n = static_cast<int64_t>(x.as_list().size());
      const int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
      if (i < 0 || i >= n) return Value::Undefined(absl::StrCat("[", key.as_int(), "]"));
      return x.as_list()[static_cast<size_t>(i)];
    }
    const std::u32string cps = CodePoints(x.as_string());
    const int64_t n = static_cast<int64_t>(cps.size());
    const int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
    if (i < 0 || i >= n) return Value::Undefined(absl::StrCat("[", key.as_int(), "]"));
    return Value(FromCodePoints(std::u32string_view(cps).substr(static_cast<size_t>(i), 1)));
  }
  return Value::Undefined(key.Str());
}

absl::StatusOr<Value> Slice(const Value& x, const Value& start, const Value& stop, const Value& step) {
  auto bound = [](const Value& v) -> absl::StatusOr<std::optional<int64_t>> {
    if (v.is_undefined() || v.is_none()) return std::optional<int64_t>();
    if (!v.is_int()) return TypeError("slice indices must be integers or None");
    return std::optional<int64_t>(v.as_int());
  };
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> b, bound(start));
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> e, bound(stop));
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> st, bound(step));
  const int64_t s = st.value_or(1);
  if (s == 0) return TypeError("slice step cannot be zero");
  std::u32string cps;
  if (x.is_string()) {
    cps = CodePoints(x.as_string());
  } else if (!x.is_list()) {
    if (x.is_undefined()) return Undefined(x);
    return TypeError(absl::StrCat("'", x.TypeName(), "' object is not subscriptable"));
  }
  const int64_t n = static_cast<int64_t>(x.is_string() ? cps.size() : x.as_list().size());
  const int64_t lower = s > 0 ? 0 : -1, upper = s > 0 ? n : n - 1;
  auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t i = *v < 0 ? *v + n : *v;
    return std::clamp(i, lower, upper);
  };
  const int64_t from = clamp(b, s > 0 ? lower : upper), to = clamp(e, s > 0 ? upper : lower);
  List items;
  std::u32string chars;
  for (int64_t i = from; s > 0 ? i < to : i > to;) {
    if (x.is_string()) {
      chars += cps[static_cast<size_t>(i)];
    } else {
      items.push_back(x.as_list()[static_cast<size_t>(i)]);
    }
    if (__builtin_add_overflow(i, s, &i)) break;  // a step past the range ends the slice
  }
  if (x.is_string()) return Value(FromCodePoints(chars));
  return x.is_tuple() ? Value::Tuple(std::move(items)) : Value(std::move(items));
}

absl::StatusOr<List> Iterate(const Value& x) {
  switch (x.kind()) {
    case Value::Kind::kUndefined: return List();
    case Value::Kind::kList: return x.as_list();
    case Value::Kind::kDict: {
      List keys;
      for (const auto& [k, v] : x.as_dict().items()) keys.push_back(Value(k));
      return keys;
    }
    case Value::Kind::kString: {
      List chars;
      for (char32_t c : CodePoints(x.as_string())) chars.push_back(Value(FromCodePoints(std::u32string(1, c))));
      return chars;
    }
    default: return TypeError(absl::StrCat("'", x.TypeName(), "' object is not iterable"));
  }
}

absl::StatusOr<Value> BinaryOp(absl::string_view op, const Value& a, const Value& b) {
  if (op == "~") return Value(a.Str() + b.Str());
  if (op == "==") return Value(a == b);
  if (op == "!=") return Value(!(a == b));
  if (op == "in" || op == "not in") {
    MOE_ASSIGN_OR_RETURN(bool in, Contains(b, a));
    return Value(op == "in" ? in : !in);
  }
  if (op == "<" || op == ">" || op == "<=" || op == ">=") {
    if (a.is_undefined()) return Undefined(a);
    if (b.is_undefined()) return Undefined(b);
    const bool flip = op == ">" || op == "<=";
    MOE_ASSIGN_OR_RETURN(bool less, flip ? Value::Less(b, a) : Value::Less(a, b));
    return Value(op == "<" || op == ">" ? less : !less);
  }
  return Arithmetic(op, a, b);
}

absl::StatusOr<bool> ApplyTest(absl::string_view name, const Value& v, Args& args) {
  const Value* other = Arg(args, 0, "value");
  auto need_other = [&]() -> absl::Status {
    if (other == nullptr) return TypeError(absl::StrCat("the test '", name, "' needs an argument"));
    return absl::OkStatus();
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_int() == 1;
  if (name == "false") return v.is_bool() && v.as_int() == 0;
  if (name == "integer") return v.kind() == Value::Kind::kInt;
  if (name == "float") return v.kind() == Value::Kind::kFloat;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string();
  if (name == "callable") return v.is_function();
  if (name == "lower" || name == "upper") {
    if (!v.is_string()) return false;
    const std::u32string cps = CodePoints(v.as_string());
    return cps == MapCase(cps, name == "upper");
  }
  if (name == "even" || name == "odd") {
    if (!v.is_int()) return TypeError(absl::StrCat("the test '", name, "' needs an integer"));
    return (v.as_int() % 2 == 0) == (name == "even");
  }
  if (name == "divisibleby") {
    MOE_RETURN_IF_ERROR(need_other());
    if (!v.is_int() || !other->is_int() || other->as_int() == 0) return TypeError("divisibleby: needs nonzero integers");
    return other->as_int() == -1 || v.as_int() % other->as_int() == 0;
  }
  if (name == "sameas") {
    MOE_RETURN_IF_ERROR(need_other());
    return v.kind() == other->kind() && v == *other;
  }
  if (name == "in") {
    MOE_RETURN_IF_ERROR(need_other());
    return Contains(*other, v);
  }
  static constexpr std::pair<absl::string_view, absl::string_view> kCompare[] = {
      {"eq", "=="}, {"equalto", "=="}, {"==", "=="}, {"ne", "!="}, {"!=", "!="}, {"lt", "<"},
      {"lessthan", "<"}, {"<", "<"}, {"le", "<="}, {"<=", "<="}, {"gt", ">"}, {"greaterthan", ">"},
      {">", ">"}, {"ge", ">="}, {">=", ">="}};
  for (const auto& [test, op] : kCompare) {
    if (name != test) continue;
    MOE_RETURN_IF_ERROR(need_other());
    MOE_ASSIGN_OR_RETURN(Value r, BinaryOp(op, v, *other));
    return r.Truthy();
  }
  return TypeError(absl::StrCat("no test named '", name, "'"));
}

absl::StatusOr<Value> ApplyFilter(absl::string_view name, const Value& v, Args& args) {
  if (name == "length" || name == "count") return Length(v);
  if (name == "tojson") {
    for (const auto& [k, value] : args.keyword) {
      if (k != "indent" && !(k == "ensure_ascii" && !value.Truthy())) {
        return TypeError(absl::StrCat("tojson: the argument '", k, "' is not supported"));
      }
    }
    const Value indent = ArgOr(args, 0, "indent", Value::None());
    if (!indent.is_none() && !indent.is_int()) return TypeError("tojson: indent must be an integer");
    MOE_ASSIGN_OR_RETURN(std::string json,
                         v.ToJson(indent.is_none() ? std::nullopt : std::optional<int>(static_cast<int>(indent.as_int()))));
    return Value(std::move(json));
  }
  if (name == "default" || name == "d") {
    const bool boolean = ArgOr(args, 1, "boolean", Value(false)).Truthy();
    if (v.is_undefined() || (boolean && !v.Truthy())) return ArgOr(args, 0, "default_value", Value(""));
    return v;
  }
  if (name == "safe") return v;
  if (name == "string") return Value(v.Str());
  if (name == "list") {
    MOE_ASSIGN_OR_RETURN(List items, Iterate(v));
    return Value(std::move(items));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value(List());
    if (!v.is_dict()) return TypeError("items: expected a mapping");
    List out;
    for (const auto& [k, value] : v.as_dict().items()) out.push_back(Value::Tuple(List{Value(k), value}));
    return Value(std::move(out));
  }
  if (name == "first" || name == "last") {
    MOE_ASSIGN_OR_RETURN(List items, Iterate(v));
    if (items.empty()) return Value::Undefined(absl::StrCat(name, " of an empty sequence"));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string cps = CodePoints(v.as_string());
      std::reverse(cps.begin(), cps.end());
      return Value(FromCodePoints(cps));
    }
    MOE_ASSIGN_OR_RETURN(List items, Iterate(v));
    std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "join") {
    MOE_ASSIGN_OR_RETURN(List items, Iterate(v));
    const Value sep = ArgOr(args, 0, "d", Value(""));
    const Value attribute = ArgOr(args, 1, "attribute", Value::None());
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += sep.Str();
      out += (attribute.is_string() ? Attribute(items[i], attribute.as_string()) : items[i]).Str();
    }
    return Value(std::move(out));
  }
  if (name == "sort") return Sorted(v, args);
  if (name == "map") return Map(v, args);
  if (name == "select" || name == "reject") return Select(v, args, false, name == "select");
  if (name == "selectattr" || name == "rejectattr") return Select(v, args, true, name == "selectattr");
  if (name == "unique") {
    MOE_ASSIGN_OR_RETURN(List items, Iterate(v));
    List out;
    for (const Value& item : items) {
      if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
    }
    return Value(std::move(out));
  }
  if (name == "sum") {
    MOE_ASSIGN_OR_RETURN(List items, Iterate(v));
    const Value attribute = ArgOr(args, 0, "attribute", Value::None());
    Value total = ArgOr(args, 1, "start", Value(0));
    for (const Value& item : items) {
      MOE_ASSIGN_OR_RETURN(total, BinaryOp("+", total, attribute.is_string() ? Attribute(item, attribute.as_string()) : item));
    }
    return total;
  }
  if (name == "min" || name == "max") {
    MOE_ASSIGN_OR_RETURN(List items, Iterate(v));
    if (items.empty()) return Value::Undefined(absl::StrCat(name, " of an empty sequence"));
    Value best = items[0];
    for (const Value& item : items) {
      MOE_ASSIGN_OR_RETURN(bool less, name == "min" ? Value::Less(item, best) : Value::Less(best, item));
      if (less) best = item;
    }
    return best;
  }
  if (name == "int") return ToInt(v, ArgOr(args, 0, "default", Value(0)));
  if (name == "float") return ToFloat(v, ArgOr(args, 0, "default", Value(0.0)));
  if (name == "abs") {
    if (!v.is_number()) return TypeError("abs: expected a number");
    if (v.kind() == Value::Kind::kFloat) return Value(std::fabs(v.as_float()));
    if (v.as_int() == std::numeric_limits<int64_t>::min()) return IntegerOverflow();
    return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
  }
  if (name == "round") {
    if (!v.is_number()) return TypeError("round: expected a number");
    const Value precision = ArgOr(args, 0, "precision", Value(0));
    const Value method = ArgOr(args, 1, "method", Value("common"));
    const double scale = std::pow(10.0, static_cast<double>(precision.as_int()));
    const double x = v.as_float() * scale;
    // "common" is Python's round(): halves go to the even neighbour.
    const double r = method.Str() == "floor" ? std::floor(x) : method.Str() == "ceil" ? std::ceil(x) : std::nearbyint(x);
    return Value(r / scale);
  }
  if (name == "indent") return Indent(v, args);
  if (name == "e" || name == "escape") return Value(HtmlEscape(v.Str()));
  if (name == "format") {
    Value list(args.positional);
    return BinaryOp("%", v, list);
  }
  // The rest take a string.
  MOE_RETURN_IF_ERROR(NeedString(v, name));
  const std::string& s = v.as_string();
  if (name == "trim") return Value(Strip(s, Arg(args, 0, "chars"), true, true));
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    Args none;
    return StringMethod(s, name, none);
  }
  if (name == "replace") return Replace(s, args);
  if (name == "wordcount") {
    MOE_ASSIGN_OR_RETURN(List words, Split(s, nullptr, -1, false));
    return Value(static_cast<int64_t>(words.size()));
  }
  return TypeError(absl::StrCat("no filter named '", name, "'"));
}

absl::StatusOr<Value> CallMethod(const Value& object, absl::string_view name, Args& args) {
  if (object.is_string()) return StringMethod(object.as_string(), name, args);
  if (object.is_dict() && !object.is_namespace()) {
    const Dict& d = object.as_dict();
    if (name == "get") {
      const Value* key = Arg(args, 0, "key");
      if (key == nullptr) return TypeError("get: a key is required");
      const Value* v = key->is_string() ? d.Find(key->as_string()) : nullptr;
      return v != nullptr ? *v : ArgOr(args, 1, "default", Value::None());
    }
    if (name == "items") return ApplyFilter("items", object, args);
    if (name == "keys" || name == "values") {
      List out;
      for (const auto& [k, v] : d.items()) out.push_back(name == "keys" ? Value(k) : v);
      return Value(std::move(out));
    }
    if (name == "update" || name == "pop" || name == "setdefault" || name == "clear" || name == "popitem") {
      return TypeError(absl::StrCat("dict.", name, " is not allowed: templates cannot modify their input"));
    }
  }
  if (object.is_list()) {
    if (name == "index" || name == "count") {
      const Value* x = Arg(args, 0, "value");
      if (x == nullptr) return TypeError(absl::StrCat(name, ": an argument is required"));
      const List& l = object.as_list();
      if (name == "count") return Value(static_cast<int64_t>(std::count(l.begin(), l.end(), *x)));
      const auto it = std::find(l.begin(), l.end(), *x);
      if (it == l.end()) return TypeError("list.index: the value is not in the list");
      return Value(static_cast<int64_t>(it - l.begin()));
    }
    if (name == "append" || name == "extend" || name == "insert" || name == "pop" || name == "remove" ||
        name == "sort" || name == "reverse" || name == "clear") {
      return TypeError(absl::StrCat("list.", name, " is not allowed: templates cannot modify their input"));
    }
  }
  return absl::NotFoundError(name);
}

Dict Globals() {
  Dict g;
  g.Set("range", Value::Func([](Args& a) -> absl::StatusOr<Value> {
          std::vector<int64_t> n;
          for (const Value& v : a.positional) {
            if (!v.is_int()) return TypeError("range: expected integers");
            n.push_back(v.as_int());
          }
          if (n.empty() || n.size() > 3) return TypeError("range: expected 1 to 3 arguments");
          const int64_t start = n.size() == 1 ? 0 : n[0], stop = n.size() == 1 ? n[0] : n[1];
          const int64_t step = n.size() == 3 ? n[2] : 1;
          if (step == 0) return TypeError("range: step must not be zero");
          List out;
          for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
            if (out.size() >= 1'000'000) return TypeError("range: more than 1,000,000 items");
            out.push_back(Value(i));
            if (__builtin_add_overflow(i, step, &i)) break;  // the next item is past the range
          }
          return Value(std::move(out));
        }));
  g.Set("namespace", Value::Func([](Args& a) -> absl::StatusOr<Value> {
          Dict d;
          for (const Value& v : a.positional) {
            if (!v.is_dict()) return TypeError("namespace: expected a mapping");
            for (const auto& [k, x] : v.as_dict().items()) d.Set(k, x);
          }
          for (const auto& [k, x] : a.keyword) d.Set(k, x);
          return Value::Namespace(std::move(d));
        }));
  g.Set("dict", Value::Func([](Args& a) -> absl::StatusOr<Value> {
          Dict d;
          for (const auto& [k, x] : a.keyword) d.Set(k, x);
          return Value(std::move(d));
        }));
  g.Set("raise_exception", Value::Func([](Args& a) -> absl::StatusOr<Value> {
          return absl::InvalidArgumentError(
              absl::StrCat("the template raised: ", a.positional.empty() ? "" : a.positional[0].Str()));
        }));
  g.Set("strftime_now", Value::Func([](Args& a) -> absl::StatusOr<Value> {
          if (a.positional.empty() || !a.positional[0].is_string()) {
            return TypeError("strftime_now: expected a format string");
          }
          const std::time_t now = std::time(nullptr);
          std::tm local{};
          localtime_r(&now, &local);
          char buf[256];
          const size_t n = std::strftime(buf, sizeof(buf), a.positional[0].as_string().c_str(), &local);
          return Value(std::string(buf, n));
        }));
  return g;
}

}  // namespace moe::jinja
