#include "text/jinja/parser.h"

#include <algorithm>
#include <initializer_list>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::jinja {
namespace {

using ExprPtr = std::unique_ptr<Expr>;
using K = Token::Kind;

// Blocks, parentheses, brackets and unary operators nested deeper than this are an error: parsing
// recurses once per level (real chat templates nest a few levels).
constexpr int kMaxNesting = 100;

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : t_(tokens) {}

  absl::StatusOr<Body> Template() {
    Body body;
    std::string end;
    MOE_RETURN_IF_ERROR(ParseBody({}, &body, &end));
    return body;
  }

 private:
  // One level of nesting for the lifetime of the object; `status` is the error past kMaxNesting.
  struct Nested {
    explicit Nested(Parser* p) : parser(p) {
      if (++parser->nesting_ > kMaxNesting) {
        status = parser->Error(absl::StrCat("nested more than ", kMaxNesting, " levels deep"));
      }
    }
    ~Nested() { --parser->nesting_; }
    Parser* parser;
    absl::Status status;
  };

  const Token& Peek(size_t ahead = 0) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  const Token& Next() { return t_[std::min(i_++, t_.size() - 1)]; }
  bool IsOp(absl::string_view op, size_t ahead = 0) const {
    return Peek(ahead).kind == K::kOperator && Peek(ahead).text == op;
  }
  bool IsName(absl::string_view name, size_t ahead = 0) const {
    return Peek(ahead).kind == K::kName && Peek(ahead).text == name;
  }
  bool SkipOp(absl::string_view op) {
    if (!IsOp(op)) return false;
    ++i_;
    return true;
  }
  bool SkipName(absl::string_view name) {
    if (!IsName(name)) return false;
    ++i_;
    return true;
  }
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("line ", Peek().line, ": ", what));
  }
  std::string Describe(const Token& t) const {
    switch (t.kind) {
      case K::kEnd: return "the end of the template";
      case K::kBlockEnd: return "'%}'";
      case K::kPrintEnd: return "'}}'";
      case K::kText: return "text";
      default: return absl::StrCat("'", t.text, "'");
    }
  }
  absl::Status ExpectOp(absl::string_view op) {
    if (SkipOp(op)) return absl::OkStatus();
    return Error(absl::StrCat("expected '", op, "', found ", Describe(Peek())));
  }
  absl::Status ExpectBlockEnd() {
    if (Peek().kind == K::kBlockEnd) {
      ++i_;
      return absl::OkStatus();
    }
    return Error(absl::StrCat("expected the end of the tag '%}', found ", Describe(Peek())));
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().kind != K::kName) return Error(absl::StrCat("expected a name, found ", Describe(Peek())));
    return Next().text;
  }
  ExprPtr Node(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // Statements up to a block tag named in `ends` (left unread but for its name, stored in *end).
  absl::Status ParseBody(std::initializer_list<absl::string_view> ends, Body* body, std::string* end) {
    const Nested nested(this);
    MOE_RETURN_IF_ERROR(nested.status);
    while (true) {
      const Token& t = Peek();
      if (t.kind == K::kEnd) {
        if (ends.size() == 0) return absl::OkStatus();
        return Error(absl::StrCat("the template ends before {% ", *ends.begin(), " %}"));
      }
      if (t.kind == K::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->line = t.line;
        s->text = t.text;
        body->push_back(std::move(s));
        ++i_;
      } else if (t.kind == K::kPrintBegin) {
        ++i_;
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kPrint;
        s->line = t.line;
        MOE_ASSIGN_OR_RETURN(s->expr, Expression());
        if (Peek().kind != K::kPrintEnd) return Error(absl::StrCat("expected '}}', found ", Describe(Peek())));
        ++i_;
        body->push_back(std::move(s));
      } else if (t.kind == K::kBlockBegin) {
        ++i_;
        MOE_ASSIGN_OR_RETURN(std::string name, ExpectName());
        if (std::find(ends.begin(), ends.end(), name) != ends.end()) {
          *end = name;
          return absl::OkStatus();
        }
        MOE_ASSIGN_OR_RETURN(auto s, Statement(name, t.line));
        body->push_back(std::move(s));
      } else {
        return Error(absl::StrCat("unexpected ", Describe(t)));
      }
    }
  }

  absl::StatusOr<std::unique_ptr<Stmt>> Statement(const std::string& name, int line) {
    auto s = std::make_unique<Stmt>();
    s->line = line;
    std::string end;
    if (name == "if") {
      s->kind = Stmt::Kind::kIf;
      MOE_ASSIGN_OR_RETURN(ExprPtr cond, Expression());
      while (true) {
        MOE_RETURN_IF_ERROR(ExpectBlockEnd());
        Body body;
        MOE_RETURN_IF_ERROR(ParseBody({"endif", "elif", "else"}, &body, &end));
        s->branches.emplace_back(std::move(cond), std::move(body));
        if (end == "endif") break;
        if (end == "else") {
          MOE_RETURN_IF_ERROR(ExpectBlockEnd());
          Body else_body;
          MOE_RETURN_IF_ERROR(ParseBody({"endif"}, &else_body, &end));
          s->branches.emplace_back(nullptr, std::move(else_body));
          break;
        }
        MOE_ASSIGN_OR_RETURN(cond, Expression());
      }
    } else if (name == "for") {
      s->kind = Stmt::Kind::kFor;
      do {
        MOE_ASSIGN_OR_RETURN(std::string target, ExpectName());
        s->targets.push_back(std::move(target));
      } while (SkipOp(","));
      if (!SkipName("in")) return Error("expected 'in' in a for loop");
      MOE_ASSIGN_OR_RETURN(s->expr, Or());  // "if" after it filters, so no conditional here
      if (SkipName("if")) {
        MOE_ASSIGN_OR_RETURN(s->filter, Expression());
      }
      if (IsName("recursive")) return Error("recursive for loops are not supported");
      MOE_RETURN_IF_ERROR(ExpectBlockEnd());
      MOE_RETURN_IF_ERROR(ParseBody({"endfor", "else"}, &s->body, &end));
      if (end == "else") {
        MOE_RETURN_IF_ERROR(ExpectBlockEnd());
        MOE_RETURN_IF_ERROR(ParseBody({"endfor"}, &s->else_body, &end));
      }
    } else if (name == "set") {
      MOE_ASSIGN_OR_RETURN(std::string target, ExpectName());
      s->targets.push_back(std::move(target));
      if (SkipOp(".")) {
        MOE_ASSIGN_OR_RETURN(s->attribute, ExpectName());
      } else {
        while (SkipOp(",")) {
          MOE_ASSIGN_OR_RETURN(std::string more, ExpectName());
          s->targets.push_back(std::move(more));
        }
      }
      if (SkipOp("=")) {
        s->kind = Stmt::Kind::kSet;
        MOE_ASSIGN_OR_RETURN(s->expr, TupleOrExpression());
      } else {
        if (s->targets.size() != 1 || !s->attribute.empty()) return Error("expected '=' in set");
        s->kind = Stmt::Kind::kSetBlock;
        MOE_RETURN_IF_ERROR(ExpectBlockEnd());
        MOE_RETURN_IF_ERROR(ParseBody({"endset"}, &s->body, &end));
      }
    } else if (name == "macro") {
      s->kind = Stmt::Kind::kMacro;
      MOE_ASSIGN_OR_RETURN(s->name, ExpectName());
      MOE_RETURN_IF_ERROR(ExpectOp("("));
      while (!SkipOp(")")) {
        if (!s->params.empty()) MOE_RETURN_IF_ERROR(ExpectOp(","));
        MOE_ASSIGN_OR_RETURN(std::string param, ExpectName());
        ExprPtr def;
        if (SkipOp("=")) {
          MOE_ASSIGN_OR_RETURN(def, Expression());
        }
        s->params.emplace_back(std::move(param), std::move(def));
      }
      MOE_RETURN_IF_ERROR(ExpectBlockEnd());
      MOE_RETURN_IF_ERROR(ParseBody({"endmacro"}, &s->body, &end));
    } else if (name == "break" || name == "continue") {
      s->kind = name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
    } else if (name == "generation") {
      s->kind = Stmt::Kind::kBlock;
      MOE_RETURN_IF_ERROR(ExpectBlockEnd());
      MOE_RETURN_IF_ERROR(ParseBody({"endgeneration"}, &s->body, &end));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line, ": the tag {% ", name, " %} is not supported"));
    }
    MOE_RETURN_IF_ERROR(ExpectBlockEnd());
    return s;
  }

  // `a, b` (a tuple) or one expression: the right side of `set`.
  absl::StatusOr<ExprPtr> TupleOrExpression() {
    const int line = Peek().line;
    MOE_ASSIGN_OR_RETURN(ExprPtr first, Expression());
    if (!IsOp(",")) return first;
    ExprPtr tuple = Node(Expr::Kind::kTuple, line);
    tuple->operands.push_back(std::move(first));
    while (SkipOp(",")) {
      MOE_ASSIGN_OR_RETURN(ExprPtr e, Expression());
      tuple->operands.push_back(std::move(e));
    }
    return tuple;
  }

  absl::StatusOr<ExprPtr> Expression() {
    MOE_ASSIGN_OR_RETURN(ExprPtr value, Or());
    while (IsName("if")) {
      const int line = Next().line;
      ExprPtr cond = Node(Expr::Kind::kCond, line);
      MOE_ASSIGN_OR_RETURN(ExprPtr test, Or());
      ExprPtr otherwise;
      if (SkipName("else")) {
        MOE_ASSIGN_OR_RETURN(otherwise, Expression());
      }
      cond->operands.push_back(std::move(value));
      cond->operands.push_back(std::move(test));
      cond->operands.push_back(std::move(otherwise));
      value = std::move(cond);
    }
    return value;
  }

  absl::StatusOr<ExprPtr> Binary(Expr::Kind kind, std::string op, ExprPtr a, ExprPtr b, int line) {
    ExprPtr e = Node(kind, line);
    e->name = std::move(op);
    e->operands.push_back(std::move(a));
    e->operands.push_back(std::move(b));
    return e;
  }

  absl::StatusOr<ExprPtr> Or() {
    MOE_ASSIGN_OR_RETURN(ExprPtr left, And());
    while (IsName("or")) {
      const int line = Next().line;
      MOE_ASSIGN_OR_RETURN(ExprPtr right, And());
      MOE_ASSIGN_OR_RETURN(left, Binary(Expr::Kind::kOr, "or", std::move(left), std::move(right), line));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> And() {
    MOE_ASSIGN_OR_RETURN(ExprPtr left, Not());
    while (IsName("and")) {
      const int line = Next().line;
      MOE_ASSIGN_OR_RETURN(ExprPtr right, Not());
      MOE_ASSIGN_OR_RETURN(left, Binary(Expr::Kind::kAnd, "and", std::move(left), std::move(right), line));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> Not() {
    const Nested nested(this);
    MOE_RETURN_IF_ERROR(nested.status);
    if (IsName("not")) {
      ExprPtr e = Node(Expr::Kind::kNot, Next().line);
      MOE_ASSIGN_OR_RETURN(ExprPtr operand, Not());
      e->operands.push_back(std::move(operand));
      return e;
    }
    return Compare();
  }

  absl::StatusOr<ExprPtr> Compare() {
    MOE_ASSIGN_OR_RETURN(ExprPtr left, Math1());
    while (true) {
      std::string op;
      const int line = Peek().line;
      if (Peek().kind == K::kOperator &&
          (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" || Peek().text == "<=" ||
           Peek().text == ">" || Peek().text == ">=")) {
        op = Next().text;
      } else if (IsName("in")) {
        ++i_;
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        i_ += 2;
        op = "not in";
      } else {
        return left;
      }
      MOE_ASSIGN_OR_RETURN(ExprPtr right, Math1());
      MOE_ASSIGN_OR_RETURN(left, Binary(Expr::Kind::kBinary, op, std::move(left), std::move(right), line));
    }
  }

  // One level of left-associative binary operators.
  template <typename Operand>
  absl::StatusOr<ExprPtr> Level(std::initializer_list<absl::string_view> ops, Operand operand) {
    MOE_ASSIGN_OR_RETURN(ExprPtr left, (this->*operand)());
    while (Peek().kind == K::kOperator &&
           std::find(ops.begin(), ops.end(), Peek().text) != ops.end()) {
      const Token& op = Next();
      MOE_ASSIGN_OR_RETURN(ExprPtr right, (this->*operand)());
      MOE_ASSIGN_OR_RETURN(left, Binary(Expr::Kind::kBinary, op.text, std::move(left), std::move(right), op.line));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Math1() { return Level({"+", "-"}, &Parser::Concat); }
  absl::StatusOr<ExprPtr> Concat() { return Level({"~"}, &Parser::Math2); }
  absl::StatusOr<ExprPtr> Math2() { return Level({"*", "/", "//", "%"}, &Parser::Pow); }
  absl::StatusOr<ExprPtr> Pow() { return Level({"**"}, &Parser::UnaryWithFilters); }
  absl::StatusOr<ExprPtr> UnaryWithFilters() { return Unary(true); }

  absl::StatusOr<ExprPtr> Unary(bool with_filters) {
    const Nested nested(this);
    MOE_RETURN_IF_ERROR(nested.status);
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const Expr::Kind kind = IsOp("-") ? Expr::Kind::kNeg : Expr::Kind::kPos;
      node = Node(kind, Next().line);
      MOE_ASSIGN_OR_RETURN(ExprPtr operand, Unary(false));
      node->operands.push_back(std::move(operand));
    } else {
      MOE_ASSIGN_OR_RETURN(node, Primary());
    }
    MOE_ASSIGN_OR_RETURN(node, Postfix(std::move(node)));
    if (!with_filters) return node;
    while (true) {
      if (IsOp("|")) {
        ++i_;
        MOE_ASSIGN_OR_RETURN(node, FilterOrTest(Expr::Kind::kFilter, std::move(node)));
      } else if (IsName("is")) {
        ++i_;
        MOE_ASSIGN_OR_RETURN(node, FilterOrTest(Expr::Kind::kTest, std::move(node)));
      } else if (IsOp("(")) {
        MOE_ASSIGN_OR_RETURN(node, Call(std::move(node)));
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> FilterOrTest(Expr::Kind kind, ExprPtr value) {
    ExprPtr e = Node(kind, Peek().line);
    if (kind == Expr::Kind::kTest && SkipName("not")) e->negated = true;
    MOE_ASSIGN_OR_RETURN(e->name, ExpectName());
    e->operands.push_back(std::move(value));
    if (IsOp("(")) {
      MOE_RETURN_IF_ERROR(Arguments(e.get()));
    } else if (kind == Expr::Kind::kTest) {
      // `x is divisibleby 3`, `x is sameas none`: one argument without parentheses.
      const Token& t = Peek();
      const bool starts_operand =
          t.kind == K::kString || t.kind == K::kInt || t.kind == K::kFloat ||
          (t.kind == K::kOperator && (t.text == "[" || t.text == "{")) ||
          (t.kind == K::kName && t.text != "else" && t.text != "or" && t.text != "and" &&
           t.text != "if" && t.text != "in" && t.text != "not" && t.text != "is");
      if (starts_operand) {
        MOE_ASSIGN_OR_RETURN(ExprPtr arg, Primary());
        MOE_ASSIGN_OR_RETURN(arg, Postfix(std::move(arg)));
        e->operands.push_back(std::move(arg));
      }
    }
    return e;
  }

  // "(" arguments ")" into e->operands (after what is already there) and e->keywords.
  absl::Status Arguments(Expr* e) {
    MOE_RETURN_IF_ERROR(ExpectOp("("));
    bool first = true;
    while (!SkipOp(")")) {
      if (!first) MOE_RETURN_IF_ERROR(ExpectOp(","));
      first = false;
      if (SkipOp(")")) break;  // a trailing comma
      if (IsOp("*") || IsOp("**")) return Error("*args and **kwargs in calls are not supported");
      if (Peek().kind == K::kName && IsOp("=", 1)) {
        std::string key = Next().text;
        ++i_;
        MOE_ASSIGN_OR_RETURN(ExprPtr value, Expression());
        e->keywords.emplace_back(std::move(key), std::move(value));
      } else {
        if (!e->keywords.empty()) return Error("a positional argument follows a keyword argument");
        MOE_ASSIGN_OR_RETURN(ExprPtr value, Expression());
        e->operands.push_back(std::move(value));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> Call(ExprPtr callee) {
    ExprPtr e = Node(Expr::Kind::kCall, Peek().line);
    e->operands.push_back(std::move(callee));
    MOE_RETURN_IF_ERROR(Arguments(e.get()));
    return e;
  }

  absl::StatusOr<ExprPtr> Postfix(ExprPtr node) {
    while (true) {
      const int line = Peek().line;
      if (SkipOp(".")) {
        ExprPtr e = Node(Expr::Kind::kAttr, line);
        if (Peek().kind == K::kInt) {  // foo.0 is foo[0]
          e->kind = Expr::Kind::kItem;
          ExprPtr index = Node(Expr::Kind::kLiteral, line);
          int64_t i = 0;
          (void)absl::SimpleAtoi(Next().text, &i);
          index->literal = Value(i);
          e->operands.push_back(std::move(node));
          e->operands.push_back(std::move(index));
        } else {
          MOE_ASSIGN_OR_RETURN(e->name, ExpectName());
          e->operands.push_back(std::move(node));
        }
        node = std::move(e);
      } else if (SkipOp("[")) {
        ExprPtr parts[3];
        int colons = 0;
        for (int k = 0; k < 3; ++k) {
          if (!IsOp(":") && !IsOp("]")) {
            MOE_ASSIGN_OR_RETURN(parts[k], Expression());
          }
          if (k < 2 && SkipOp(":")) {
            ++colons;
            continue;
          }
          break;
        }
        MOE_RETURN_IF_ERROR(ExpectOp("]"));
        ExprPtr e = Node(colons ? Expr::Kind::kSlice : Expr::Kind::kItem, line);
        if (!colons && !parts[0]) return Error("an empty subscript []");
        e->operands.push_back(std::move(node));
        e->operands.push_back(std::move(parts[0]));
        if (colons) {
          e->operands.push_back(std::move(parts[1]));
          e->operands.push_back(std::move(parts[2]));
        }
        node = std::move(e);
      } else if (IsOp("(")) {
        MOE_ASSIGN_OR_RETURN(node, Call(std::move(node)));
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> Primary() {
    const Token& t = Peek();
    ExprPtr e = Node(Expr::Kind::kLiteral, t.line);
    switch (t.kind) {
      case K::kName:
        ++i_;
        if (t.text == "true" || t.text == "True") {
          e->literal = Value(true);
        } else if (t.text == "false" || t.text == "False") {
          e->literal = Value(false);
        } else if (t.text == "none" || t.text == "None") {
          e->literal = Value::None();
        } else {
          e->kind = Expr::Kind::kName;
          e->name = t.text;
        }
        return e;
      case K::kString: {
        std::string s;
        while (Peek().kind == K::kString) s += Next().text;  // adjacent literals concatenate
        e->literal = Value(std::move(s));
        return e;
      }
      case K::kInt: {
        int64_t i = 0;
        if (!absl::SimpleAtoi(t.text, &i)) return Error(absl::StrCat("integer out of range: ", t.text));
        ++i_;
        e->literal = Value(i);
        return e;
      }
      case K::kFloat: {
        double f = 0;
        (void)absl::SimpleAtod(t.text, &f);
        ++i_;
        e->literal = Value(f);
        return e;
      }
      case K::kOperator:
        if (SkipOp("(")) {
          if (SkipOp(")")) {
            e->kind = Expr::Kind::kTuple;
            return e;
          }
          MOE_ASSIGN_OR_RETURN(ExprPtr first, Expression());
          if (SkipOp(")")) return first;
          e->kind = Expr::Kind::kTuple;
          e->operands.push_back(std::move(first));
          while (SkipOp(",")) {
            if (IsOp(")")) break;
            MOE_ASSIGN_OR_RETURN(ExprPtr item, Expression());
            e->operands.push_back(std::move(item));
          }
          MOE_RETURN_IF_ERROR(ExpectOp(")"));
          return e;
        }
        if (SkipOp("[")) {
          e->kind = Expr::Kind::kList;
          while (!SkipOp("]")) {
            if (!e->operands.empty()) MOE_RETURN_IF_ERROR(ExpectOp(","));
            if (SkipOp("]")) break;
            MOE_ASSIGN_OR_RETURN(ExprPtr item, Expression());
            e->operands.push_back(std::move(item));
          }
          return e;
        }
        if (SkipOp("{")) {
          e->kind = Expr::Kind::kDict;
          while (!SkipOp("}")) {
            if (!e->operands.empty()) MOE_RETURN_IF_ERROR(ExpectOp(","));
            if (SkipOp("}")) break;
            MOE_ASSIGN_OR_RETURN(ExprPtr key, Expression());
            MOE_RETURN_IF_ERROR(ExpectOp(":"));
            MOE_ASSIGN_OR_RETURN(ExprPtr value, Expression());
            e->operands.push_back(std::move(key));
            e->operands.push_back(std::move(value));
          }
          return e;
        }
        [[fallthrough]];
      default:
        return Error(absl::StrCat("expected an expression, found ", Describe(t)));
    }
  }

  const std::vector<Token>& t_;
  size_t i_ = 0;
  int nesting_ = 0;
};

}  // namespace

absl::StatusOr<Body> Parse(const std::vector<Token>& tokens) { return Parser(tokens).Template(); }

}  // namespace moe::jinja
