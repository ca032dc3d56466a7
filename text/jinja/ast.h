// The syntax tree of a parsed Jinja template: expressions and statements, each with the source
// line it came from (for error messages).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja/value.h"

namespace moe::jinja {

struct Expr {
  enum class Kind {
    kLiteral,  // literal
    kName,     // name
    kAttr,     // operands[0].name
    kItem,     // operands[0][operands[1]]
    kSlice,    // operands[0][operands[1]:operands[2]:operands[3]] (absent parts are null)
    kCall,     // operands[0](operands[1:], keywords)
    kFilter,   // operands[0] | name(operands[1:], keywords)
    kTest,     // operands[0] is [not] name(operands[1:])
    kNot,
    kNeg,
    kPos,
    kBinary,   // operands[0] name operands[1]; name is the operator ("in", "not in", "+", ...)
    kAnd,
    kOr,
    kCond,     // operands[0] if operands[1] else operands[2] (null: undefined)
    kList,
    kTuple,    // a list that a for loop or set may unpack
    kDict,     // operands alternate key, value
  };
  Kind kind;
  int line = 0;
  std::string name;
  bool negated = false;  // kTest: "is not"
  Value literal;
  std::vector<std::unique_ptr<Expr>> operands;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> keywords;
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind {
    kText,      // text
    kPrint,     // {{ expr }}
    kIf,        // branches: (condition, body); a null condition is the else
    kFor,       // for targets in expr [if filter]: body, else_body
    kSet,       // set targets = expr, or set targets[0].attribute = expr
    kSetBlock,  // set targets[0]: body
    kMacro,     // macro name(params): body
    kBreak,
    kContinue,
    kBlock,     // a block rendered in place: {% generation %} (transformers' assistant mask)
  };
  Kind kind;
  int line = 0;
  std::string text;
  std::unique_ptr<Expr> expr;
  std::vector<std::pair<std::unique_ptr<Expr>, Body>> branches;
  std::vector<std::string> targets;
  std::string attribute;
  std::unique_ptr<Expr> filter;
  Body body, else_body;
  std::string name;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> params;  // default may be null
};

}  // namespace moe::jinja
