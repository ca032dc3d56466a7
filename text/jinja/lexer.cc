#include "text/jinja/lexer.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "text/utf8.h"

namespace moe::jinja {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// Resolves Python's backslash escapes in a string literal's body (unknown ones stay as written).
absl::StatusOr<std::string> Unescape(absl::string_view s, int line) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    auto hex = [&](size_t digits) -> absl::Status {
      uint32_t cp = 0;
      if (i + digits >= s.size()) {
        return absl::InvalidArgumentError(absl::StrCat("line ", line, ": truncated \\", std::string(1, c),
                                                       " escape"));
      }
      for (size_t k = 1; k <= digits; ++k) {
        const char h = s[i + k];
        if (!std::isxdigit(static_cast<unsigned char>(h))) {
          return absl::InvalidArgumentError(absl::StrCat("line ", line, ": bad \\", std::string(1, c), " escape"));
        }
        cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                                                 : std::tolower(static_cast<unsigned char>(h)) - 'a' + 10);
      }
      if (cp >= 0x110000) return absl::InvalidArgumentError(absl::StrCat("line ", line, ": escape out of range"));
      text::AppendUtf8(cp, &out);
      i += digits;
      return absl::OkStatus();
    };
    switch (c) {
      case '\n': break;  // a line continuation
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x':
        if (absl::Status st = hex(2); !st.ok()) return st;
        break;
      case 'u':
        if (absl::Status st = hex(4); !st.ok()) return st;
        break;
      case 'U':
        if (absl::Status st = hex(8); !st.ok()) return st;
        break;
      default:
        if (c >= '0' && c <= '7') {  // up to three octal digits
          uint32_t cp = static_cast<uint32_t>(c - '0');
          for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k) {
            cp = cp * 8 + static_cast<uint32_t>(s[++i] - '0');
          }
          text::AppendUtf8(cp, &out);
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {}

  absl::StatusOr<std::vector<Token>> Run() {
    bool line_starting = true;  // the last tag ended a line (Jinja's lstrip_blocks looks at it)
    while (pos_ < src_.size()) {
      const size_t at = NextTag(pos_);
      std::string text = src_.substr(pos_, at - pos_);
      if (at == std::string::npos) {
        Emit(Token::Kind::kText, std::move(text));
        break;
      }
      const char kind = src_[at + 1];
      const char marker = at + 2 < src_.size() ? src_[at + 2] : '\0';
      if (marker == '-') {
        text.erase(std::find_if_not(text.rbegin(), text.rend(), IsSpace).base(), text.end());
      } else if (marker != '+' && kind != '{') {  // lstrip_blocks: block and comment tags only
        const size_t l_pos = text.rfind('\n') + 1;  // npos + 1 == 0
        if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
            std::all_of(text.begin() + static_cast<long>(l_pos), text.end(), IsSpace)) {
          text.resize(l_pos);
        }
      }
      Advance(at);
      if (!text.empty()) Emit(Token::Kind::kText, std::move(text));
      pos_ = at + 2 + ((marker == '-' || marker == '+') ? 1 : 0);
      if (kind == '#') {
        MOE_RETURN_IF_ERROR(Comment());
      } else {
        MOE_RETURN_IF_ERROR(Tag(kind == '{'));
      }
      line_starting = pos_ > 0 && src_[pos_ - 1] == '\n';
    }
    Emit(Token::Kind::kEnd, "");
    return std::move(tokens_);
  }

 private:
  size_t NextTag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return std::string::npos;
  }

  void Advance(size_t to) {
    line_ += static_cast<int>(std::count(src_.begin() + static_cast<long>(pos_),
                                         src_.begin() + static_cast<long>(to), '\n'));
    pos_ = to;
  }

  void Emit(Token::Kind kind, std::string text) { tokens_.push_back({kind, std::move(text), line_}); }

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("line ", line_, ": ", what));
  }

  // After a tag's closing delimiter: `-` strips the whitespace that follows; trim_blocks takes
  // one newline after a block or comment tag unless `+` says to keep it.
  void AfterTag(char marker, bool block_or_comment) {
    if (marker == '-') {
      size_t end = pos_;
      while (end < src_.size() && IsSpace(src_[end])) ++end;
      Advance(end);
    } else if (marker != '+' && block_or_comment && pos_ < src_.size() && src_[pos_] == '\n') {
      Advance(pos_ + 1);
    }
  }

  absl::Status Comment() {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) return Error("a comment {# is never closed");
    const char marker = end > pos_ && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : '\0';
    Advance(end + 2);
    AfterTag(marker, true);
    return absl::OkStatus();
  }

  absl::Status Tag(bool print) {
    const absl::string_view close = print ? "}}" : "%}";
    Emit(print ? Token::Kind::kPrintBegin : Token::Kind::kBlockBegin, print ? "{{" : "{%");
    int depth = 0;  // brackets open inside the tag: "}}" closes it only at depth 0
    while (true) {
      while (pos_ < src_.size() && IsSpace(src_[pos_])) Advance(pos_ + 1);
      if (pos_ >= src_.size()) return Error(absl::StrCat("a tag is never closed with ", close));
      const absl::string_view rest = absl::string_view(src_).substr(pos_);
      if (depth == 0) {
        for (char marker : {'-', '+'}) {
          if (rest.size() > 2 && rest[0] == marker && rest.substr(1, 2) == close) {
            pos_ += 3;
            Emit(print ? Token::Kind::kPrintEnd : Token::Kind::kBlockEnd, std::string(close));
            AfterTag(marker, !print);
            return absl::OkStatus();
          }
        }
        if (rest.substr(0, 2) == close) {
          pos_ += 2;
          Emit(print ? Token::Kind::kPrintEnd : Token::Kind::kBlockEnd, std::string(close));
          AfterTag('\0', !print);
          return absl::OkStatus();
        }
      }
      const char c = rest[0];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t n = 1;
        while (n < rest.size() && (std::isalnum(static_cast<unsigned char>(rest[n])) || rest[n] == '_')) ++n;
        Emit(Token::Kind::kName, std::string(rest.substr(0, n)));
        pos_ += n;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t n = 0;
        while (n < rest.size() && std::isdigit(static_cast<unsigned char>(rest[n]))) ++n;
        bool is_float = false;
        if (n + 1 < rest.size() && rest[n] == '.' && std::isdigit(static_cast<unsigned char>(rest[n + 1]))) {
          is_float = true;
          ++n;
          while (n < rest.size() && std::isdigit(static_cast<unsigned char>(rest[n]))) ++n;
        }
        if (n < rest.size() && (rest[n] == 'e' || rest[n] == 'E')) {
          size_t m = n + 1;
          if (m < rest.size() && (rest[m] == '+' || rest[m] == '-')) ++m;
          if (m < rest.size() && std::isdigit(static_cast<unsigned char>(rest[m]))) {
            is_float = true;
            n = m;
            while (n < rest.size() && std::isdigit(static_cast<unsigned char>(rest[n]))) ++n;
          }
        }
        Emit(is_float ? Token::Kind::kFloat : Token::Kind::kInt, std::string(rest.substr(0, n)));
        pos_ += n;
      } else if (c == '\'' || c == '"') {
        size_t n = 1;
        while (n < rest.size() && rest[n] != c) n += rest[n] == '\\' ? 2 : 1;
        if (n >= rest.size()) return Error("a string literal is never closed");
        auto value = Unescape(rest.substr(1, n - 1), line_);
        if (!value.ok()) return value.status();
        Emit(Token::Kind::kString, *std::move(value));
        Advance(pos_ + n + 1);
      } else {
        static constexpr absl::string_view kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
        size_t n = 0;
        for (absl::string_view op : kTwo) {
          if (rest.substr(0, 2) == op) n = 2;
        }
        if (n == 0) {
          if (absl::string_view("+-*/%~<>=()[]{},.:|").find(c) == absl::string_view::npos) {
            return Error(absl::StrCat("unexpected character '", std::string(1, c), "' in a tag"));
          }
          n = 1;
          if (c == '(' || c == '[' || c == '{') ++depth;
          if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
        }
        Emit(Token::Kind::kOperator, std::string(rest.substr(0, n)));
        pos_ += n;
      }
    }
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Lex(absl::string_view source) {
  // Jinja's lexer reads "\r\n" and "\r" as "\n" and drops one newline at the end of the source.
  std::string src;
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src += source[i];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  return Lexer(std::move(src)).Run();
}

}  // namespace moe::jinja
