#include "text/jinja/template.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "text/jinja/builtins.h"
#include "text/jinja/lexer.h"
#include "text/jinja/parser.h"

namespace moe::jinja {
namespace {

constexpr size_t kMaxOutput = size_t{16} << 20;  // a prompt is far smaller: this stops a runaway loop
constexpr int kMaxCallDepth = 64;
// Statements and expressions evaluated inside one another, macro bodies included: evaluation
// recurses once per level, so this bounds the stack (a long chain such as 1 + 1 + ... or a
// filter chain is one level per operator).
constexpr int kMaxEvalDepth = 400;
constexpr int64_t kMaxIterations = 1'000'000;  // loop iterations and macro calls, all together

enum class Flow { kNormal, kBreak, kContinue };

// An error with the line it happened on (once: the innermost line wins).
absl::Status At(int line, const absl::Status& s) {
  if (s.ok() || absl::StartsWith(s.message(), "line ")) return s;
  return absl::Status(s.code(), absl::StrCat("line ", line, ": ", s.message()));
}

class Renderer {
 public:
  Renderer(const Dict& variables, std::string* out) : out_(out) {
    const Dict globals = Globals();
    for (const auto& [k, v] : globals.items()) globals_[k] = v;
    for (const auto& [k, v] : variables.items()) top_[k] = v;
    scope_ = {&globals_, &top_};
  }

  absl::Status Run(const Body& body) {
    MOE_ASSIGN_OR_RETURN(Flow flow, Exec(body, out_));
    (void)flow;  // break/continue outside a loop end the template, as they would a loop body
    return absl::OkStatus();
  }

 private:
  using Frame = absl::flat_hash_map<std::string, Value>;

  // Pushes a frame for the lifetime of the object.
  class Scoped {
   public:
    Scoped(Renderer* r, Frame* f) : r_(r) { r_->scope_.push_back(f); }
    ~Scoped() { r_->scope_.pop_back(); }

   private:
    Renderer* r_;
  };

  Value Lookup(const std::string& name) const {
    for (auto it = scope_.rbegin(); it != scope_.rend(); ++it) {
      auto found = (*it)->find(name);
      if (found != (*it)->end()) return found->second;
    }
    return Value::Undefined(name);
  }

  absl::Status Assign(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      (*scope_.back())[targets[0]] = v;
      return absl::OkStatus();
    }
    if (!v.is_list() || v.as_list().size() != targets.size()) {
      return At(line, absl::InvalidArgumentError(absl::StrCat(
                          "cannot unpack ", v.TypeName(), " into ", targets.size(), " names")));
    }
    for (size_t i = 0; i < targets.size(); ++i) (*scope_.back())[targets[i]] = v.as_list()[i];
    return absl::OkStatus();
  }

  // One more loop iteration or macro call: a template that would run for hours stops.
  absl::Status Count() {
    if (++iterations_ > kMaxIterations) {
      return absl::ResourceExhaustedError("the template runs over 1,000,000 loop iterations and macro calls");
    }
    return absl::OkStatus();
  }

  absl::Status Emit(std::string* out, absl::string_view s) {
    if (out->size() + s.size() > kMaxOutput) {
      return absl::ResourceExhaustedError("the template's output is over 16 MiB");
    }
    out->append(s.data(), s.size());
    return absl::OkStatus();
  }

  absl::StatusOr<Flow> Exec(const Body& body, std::string* out) {
    for (const auto& s : body) {
      MOE_ASSIGN_OR_RETURN(Flow flow, Exec(*s, out));
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Exec(const Stmt& s, std::string* out) {
    const Deeper deeper(this);
    MOE_RETURN_IF_ERROR(deeper.status);
    switch (s.kind) {
      case Stmt::Kind::kText:
        MOE_RETURN_IF_ERROR(Emit(out, s.text));
        return Flow::kNormal;
      case Stmt::Kind::kPrint: {
        MOE_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        MOE_RETURN_IF_ERROR(Emit(out, v.Str()));
        return Flow::kNormal;
      }
      case Stmt::Kind::kIf:
        for (const auto& [cond, body] : s.branches) {
          bool take = cond == nullptr;
          if (!take) {
            MOE_ASSIGN_OR_RETURN(Value c, Eval(*cond));
            take = c.Truthy();
          }
          if (take) return Exec(body, out);
        }
        return Flow::kNormal;
      case Stmt::Kind::kFor: return For(s, out);
      case Stmt::Kind::kSet: {
        MOE_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        if (s.attribute.empty()) {
          MOE_RETURN_IF_ERROR(Assign(s.targets, v, s.line));
          return Flow::kNormal;
        }
        const Value ns = Lookup(s.targets[0]);
        if (!ns.is_namespace()) {
          return At(s.line, absl::InvalidArgumentError(absl::StrCat(
                                "cannot assign an attribute of '", s.targets[0],
                                "': only a namespace() object's attributes can be set")));
        }
        ns.mutable_dict().Set(s.attribute, std::move(v));
        return Flow::kNormal;
      }
      case Stmt::Kind::kSetBlock: {
        std::string captured;
        MOE_ASSIGN_OR_RETURN(Flow flow, Exec(s.body, &captured));
        (void)flow;
        MOE_RETURN_IF_ERROR(Assign(s.targets, Value(std::move(captured)), s.line));
        return Flow::kNormal;
      }
      case Stmt::Kind::kMacro:
        (*scope_.back())[s.name] = Macro(s);
        return Flow::kNormal;
      case Stmt::Kind::kBreak: return Flow::kBreak;
      case Stmt::Kind::kContinue: return Flow::kContinue;
      case Stmt::Kind::kBlock: return Exec(s.body, out);
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> For(const Stmt& s, std::string* out) {
    MOE_ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr));
    auto items = Iterate(iterable);
    if (!items.ok()) return At(s.line, items.status());
    if (s.filter != nullptr) {  // `for x in xs if cond`: the loop runs over what passes
      List kept;
      for (const Value& item : *items) {
        Frame frame;
        Scoped scoped(this, &frame);
        MOE_RETURN_IF_ERROR(Assign(s.targets, item, s.line));
        MOE_ASSIGN_OR_RETURN(Value pass, Eval(*s.filter));
        if (pass.Truthy()) kept.push_back(item);
      }
      *items = std::move(kept);
    }
    const List& list = *items;
    const int64_t n = static_cast<int64_t>(list.size());
    for (int64_t i = 0; i < n; ++i) {
      MOE_RETURN_IF_ERROR(Count());
      Frame frame;
      Scoped scoped(this, &frame);
      MOE_RETURN_IF_ERROR(Assign(s.targets, list[static_cast<size_t>(i)], s.line));
      Dict loop;
      loop.Set("index", Value(i + 1));
      loop.Set("index0", Value(i));
      loop.Set("revindex", Value(n - i));
      loop.Set("revindex0", Value(n - i - 1));
      loop.Set("first", Value(i == 0));
      loop.Set("last", Value(i == n - 1));
      loop.Set("length", Value(n));
      loop.Set("depth", Value(1));
      loop.Set("depth0", Value(0));
      if (i > 0) loop.Set("previtem", list[static_cast<size_t>(i - 1)]);
      if (i + 1 < n) loop.Set("nextitem", list[static_cast<size_t>(i + 1)]);
      loop.Set("cycle", Value::Func([i](Args& a) -> absl::StatusOr<Value> {
                 if (a.positional.empty()) return absl::InvalidArgumentError("loop.cycle: no items");
                 return a.positional[static_cast<size_t>(i) % a.positional.size()];
               }));
      frame["loop"] = Value(std::move(loop));
      MOE_ASSIGN_OR_RETURN(Flow flow, Exec(s.body, out));
      if (flow == Flow::kBreak) break;
    }
    if (n == 0) {
      MOE_ASSIGN_OR_RETURN(Flow flow, Exec(s.else_body, out));
      (void)flow;
    }
    return Flow::kNormal;
  }

  // A macro as a function: its parameters bound in a frame over the template's top level.
  Value Macro(const Stmt& s) {
    const Stmt* macro = &s;
    return Value::Func([this, macro](Args& args) -> absl::StatusOr<Value> {
      MOE_RETURN_IF_ERROR(Count());
      if (depth_ >= kMaxCallDepth) {
        return absl::ResourceExhaustedError(absl::StrCat("macro calls nested over ", kMaxCallDepth, " deep"));
      }
      if (args.positional.size() > macro->params.size()) {
        return absl::InvalidArgumentError(absl::StrCat("macro '", macro->name, "' takes ",
                                                       macro->params.size(), " arguments"));
      }
      std::vector<Frame*> saved = {globals_ptr(), top_ptr()};
      std::swap(saved, scope_);
      Frame frame;
      scope_.push_back(&frame);
      ++depth_;
      auto restore = [&] {
        --depth_;
        scope_ = std::move(saved);
      };
      for (size_t i = 0; i < macro->params.size(); ++i) {
        const auto& [name, fallback] = macro->params[i];
        const Value* given = i < args.positional.size() ? &args.positional[i] : nullptr;
        for (const auto& [k, v] : args.keyword) {
          if (k == name) given = &v;
        }
        if (given != nullptr) {
          frame[name] = *given;
        } else if (fallback != nullptr) {
          auto v = Eval(*fallback);
          if (!v.ok()) {
            restore();
            return v.status();
          }
          frame[name] = *std::move(v);
        } else {
          frame[name] = Value::Undefined(name);
        }
      }
      std::string rendered;
      auto flow = Exec(macro->body, &rendered);
      restore();
      if (!flow.ok()) return flow.status();
      return Value(std::move(rendered));
    });
  }
  Frame* globals_ptr() { return &globals_; }
  Frame* top_ptr() { return &top_; }

  absl::StatusOr<Args> Arguments(const Expr& e, size_t first) {
    Args args;
    for (size_t i = first; i < e.operands.size(); ++i) {
      MOE_ASSIGN_OR_RETURN(Value v, Eval(*e.operands[i]));
      args.positional.push_back(std::move(v));
    }
    for (const auto& [k, x] : e.keywords) {
      MOE_ASSIGN_OR_RETURN(Value v, Eval(*x));
      args.keyword.emplace_back(k, std::move(v));
    }
    return args;
  }

  static absl::Status UndefinedError(const Value& v) {
    return absl::InvalidArgumentError(absl::StrCat("'", v.undefined_name(), "' is undefined"));
  }

  // One level of evaluation for the lifetime of the object; `status` is the error past
  // kMaxEvalDepth.
  struct Deeper {
    explicit Deeper(Renderer* r) : renderer(r) {
      if (++renderer->eval_depth_ > kMaxEvalDepth) {
        status = absl::ResourceExhaustedError(
            absl::StrCat("statements and expressions nested over ", kMaxEvalDepth, " deep"));
      }
    }
    ~Deeper() { --renderer->eval_depth_; }
    Renderer* renderer;
    absl::Status status;
  };

  absl::StatusOr<Value> Eval(const Expr& e) {
    const Deeper deeper(this);
    if (!deeper.status.ok()) return At(e.line, deeper.status);
    auto v = EvalUnlocated(e);
    if (!v.ok()) return At(e.line, v.status());
    return v;
  }

  absl::StatusOr<Value> EvalUnlocated(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral: return e.literal;
      case Expr::Kind::kName: return Lookup(e.name);
      case Expr::Kind::kAttr: {
        MOE_ASSIGN_OR_RETURN(Value object, Eval(*e.operands[0]));
        if (object.is_undefined()) return UndefinedError(object);
        if (object.is_dict()) {
          const Value* v = object.as_dict().Find(e.name);
          if (v != nullptr) return *v;
        }
        return Value::Undefined(e.name);
      }
      case Expr::Kind::kItem: {
        MOE_ASSIGN_OR_RETURN(Value object, Eval(*e.operands[0]));
        if (object.is_undefined()) return UndefinedError(object);
        MOE_ASSIGN_OR_RETURN(Value key, Eval(*e.operands[1]));
        return Item(object, key);
      }
      case Expr::Kind::kSlice: {
        MOE_ASSIGN_OR_RETURN(Value object, Eval(*e.operands[0]));
        Value bounds[3];
        for (int k = 0; k < 3; ++k) {
          if (e.operands[static_cast<size_t>(k) + 1] != nullptr) {
            MOE_ASSIGN_OR_RETURN(bounds[k], Eval(*e.operands[static_cast<size_t>(k) + 1]));
          }
        }
        return Slice(object, bounds[0], bounds[1], bounds[2]);
      }
      case Expr::Kind::kCall: return Call(e);
      case Expr::Kind::kFilter: {
        MOE_ASSIGN_OR_RETURN(Value v, Eval(*e.operands[0]));
        MOE_ASSIGN_OR_RETURN(Args args, Arguments(e, 1));
        return ApplyFilter(e.name, v, args);
      }
      case Expr::Kind::kTest: {
        MOE_ASSIGN_OR_RETURN(Value v, Eval(*e.operands[0]));
        MOE_ASSIGN_OR_RETURN(Args args, Arguments(e, 1));
        MOE_ASSIGN_OR_RETURN(bool pass, ApplyTest(e.name, v, args));
        return Value(pass != e.negated);
      }
      case Expr::Kind::kNot: {
        MOE_ASSIGN_OR_RETURN(Value v, Eval(*e.operands[0]));
        return Value(!v.Truthy());
      }
      case Expr::Kind::kNeg:
      case Expr::Kind::kPos: {
        MOE_ASSIGN_OR_RETURN(Value v, Eval(*e.operands[0]));
        if (!v.is_number()) {
          if (v.is_undefined()) return UndefinedError(v);
          return absl::InvalidArgumentError(absl::StrCat("bad operand type for unary -: '", v.TypeName(), "'"));
        }
        if (e.kind == Expr::Kind::kPos) return v.kind() == Value::Kind::kFloat ? v : Value(v.as_int());
        if (v.kind() == Value::Kind::kFloat) return Value(-v.as_float());
        return BinaryOp("-", Value(int64_t{0}), v);  // 0 - x, with the subtraction's overflow check
      }
      case Expr::Kind::kBinary: {
        MOE_ASSIGN_OR_RETURN(Value a, Eval(*e.operands[0]));
        MOE_ASSIGN_OR_RETURN(Value b, Eval(*e.operands[1]));
        return BinaryOp(e.name, a, b);
      }
      case Expr::Kind::kAnd:
      case Expr::Kind::kOr: {  // Python's: the deciding operand, not a bool
        MOE_ASSIGN_OR_RETURN(Value a, Eval(*e.operands[0]));
        if (a.Truthy() == (e.kind == Expr::Kind::kOr)) return a;
        return Eval(*e.operands[1]);
      }
      case Expr::Kind::kCond: {
        MOE_ASSIGN_OR_RETURN(Value c, Eval(*e.operands[1]));
        if (c.Truthy()) return Eval(*e.operands[0]);
        if (e.operands[2] == nullptr) return Value::Undefined("the else of a conditional");
        return Eval(*e.operands[2]);
      }
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        List items;
        for (const auto& item : e.operands) {
          MOE_ASSIGN_OR_RETURN(Value v, Eval(*item));
          items.push_back(std::move(v));
        }
        return e.kind == Expr::Kind::kTuple ? Value::Tuple(std::move(items)) : Value(std::move(items));
      }
      case Expr::Kind::kDict: {
        Dict d;
        for (size_t i = 0; i + 1 < e.operands.size(); i += 2) {
          MOE_ASSIGN_OR_RETURN(Value k, Eval(*e.operands[i]));
          if (!k.is_string()) return absl::InvalidArgumentError("dict keys must be strings");
          MOE_ASSIGN_OR_RETURN(Value v, Eval(*e.operands[i + 1]));
          d.Set(k.as_string(), std::move(v));
        }
        return Value(std::move(d));
      }
    }
    return Value();
  }

  absl::StatusOr<Value> Call(const Expr& e) {
    const Expr& callee = *e.operands[0];
    MOE_ASSIGN_OR_RETURN(Args args, Arguments(e, 1));
    if (callee.kind == Expr::Kind::kAttr) {  // a method: message.get('x'), content.split('a')
      MOE_ASSIGN_OR_RETURN(Value object, Eval(*callee.operands[0]));
      if (object.is_undefined()) return UndefinedError(object);
      if (object.is_dict()) {
        const Value* member = object.as_dict().Find(callee.name);
        if (member != nullptr && member->is_function()) return member->as_function()(args);
      }
      auto r = CallMethod(object, callee.name, args);
      if (absl::IsNotFound(r.status())) {
        return absl::InvalidArgumentError(
            absl::StrCat("'", object.TypeName(), "' object has no method '", callee.name, "'"));
      }
      return r;
    }
    MOE_ASSIGN_OR_RETURN(Value f, Eval(callee));
    if (f.is_undefined()) return UndefinedError(f);
    if (!f.is_function()) {
      return absl::InvalidArgumentError(absl::StrCat("'", f.TypeName(), "' object is not callable"));
    }
    return f.as_function()(args);
  }

  std::string* out_;
  Frame globals_, top_;
  std::vector<Frame*> scope_;
  int depth_ = 0;
  int eval_depth_ = 0;
  int64_t iterations_ = 0;
};

}  // namespace

absl::StatusOr<Template> Template::Parse(absl::string_view source) {
  MOE_ASSIGN_OR_RETURN(std::vector<Token> tokens, Lex(source));
  MOE_ASSIGN_OR_RETURN(Body body, jinja::Parse(tokens));
  return Template(std::make_shared<const Body>(std::move(body)));
}

absl::StatusOr<std::string> Template::Render(const Dict& variables) const {
  std::string out;
  Renderer renderer(variables, &out);
  MOE_RETURN_IF_ERROR(renderer.Run(*body_));
  return out;
}

}  // namespace moe::jinja
