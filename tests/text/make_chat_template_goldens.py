#!/usr/bin/env python3
"""Makes the goldens the C++ chat-template renderer is tested against, with transformers as the oracle.

Two kinds of case, both written to tests/text/chat_template_goldens.json:

  conversations  each published chat template in tools/data/chat_templates/ (DeepSeek-R1,
                 DeepSeek-V3.1, Kimi K2, Kimi K2 Thinking, Qwen3) applied to a set of conversations
                 (system prompts, multi-turn, tool calls and results, reasoning, list content,
                 template switches such as enable_thinking) by
                 `PreTrainedTokenizerFast.apply_chat_template(..., tokenize=False)`;
  language       small templates, one Jinja feature each, rendered in the environment transformers
                 compiles chat templates in (trim_blocks, lstrip_blocks, its tojson and globals).

A case that makes transformers raise is recorded with "error": true; the C++ side must fail too.

Usage (needs transformers and jinja2; CI does not run this, it reads the goldens):
  python3 tests/text/make_chat_template_goldens.py --tokenizer /path/to/tokenizer.json
"""
import argparse
import json
import os

import jinja2
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))

# The special tokens each family's tokenizer_config.json names.
SPECIAL = {
    "deepseek": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
    "kimi": {"bos_token": "[BOS]", "eos_token": "[EOS]", "unk_token": "[UNK]", "pad_token": "[PAD]"},
    "qwen": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
}
TEMPLATES = {
    "deepseek-r1.jinja": "deepseek",
    "deepseek-v3.1.jinja": "deepseek",
    "kimi-k2.jinja": "kimi",
    "kimi-k2-thinking.jinja": "kimi",
    "qwen3.jinja": "qwen",
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city — «quoted», 天气",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def call(i, name, arguments):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}


# (name, messages, tools, add_generation_prompt, kwargs)
CONVERSATIONS = [
    ("user", [{"role": "user", "content": "Hello!"}], None, True, {}),
    ("user-no-generation-prompt", [{"role": "user", "content": "Hello!"}], None, False, {}),
    ("system-user", [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], None, True, {}),
    ("two-systems", [{"role": "system", "content": "Rule one."}, {"role": "system", "content": "Rule two."},
                     {"role": "user", "content": "Go"}], None, True, {}),
    ("multi-turn", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}], None, True, {}),
    ("ends-with-assistant", [{"role": "user", "content": "Name a color."},
                             {"role": "assistant", "content": "Blue."}], None, False, {}),
    ("multilingual", [{"role": "user", "content": "你好，世界！ Привет 👋🏽 café\n\ttabs  and   spaces\n"}], None, True, {}),
    ("template-looking-text", [{"role": "user", "content": "{{ not_a_var }} {% if %} {# no #} 'q' \"dq\" \\ back"}],
     None, True, {}),
    ("reasoning-in-content", [{"role": "user", "content": "Why?"},
                              {"role": "assistant", "content": "<think>\nLet me think.\n</think>\n\nBecause."},
                              {"role": "user", "content": "Sure?"}], None, True, {}),
    ("reasoning-content-field", [{"role": "user", "content": "Why?"},
                                 {"role": "assistant", "content": "Because.", "reasoning_content": "Thinking hard."}],
     None, False, {}),
    ("tool-call-and-result", [{"role": "user", "content": "Weather in Paris?"},
                              {"role": "assistant", "content": "", "tool_calls": [call(0, "get_weather", "{\"city\": \"Paris\"}")]},
                              {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 21}"},
                              {"role": "assistant", "content": "It is 21°C."},
                              {"role": "user", "content": "Thanks"}], [WEATHER_TOOL], True, {}),
    ("tool-call-null-content", [{"role": "user", "content": "Time and weather?"},
                                {"role": "assistant", "content": None,
                                 "tool_calls": [call(0, "get_time", "{}"), call(1, "get_weather", "{\"city\": \"Oslo\"}")]},
                                {"role": "tool", "tool_call_id": "call_0", "content": "12:00"},
                                {"role": "tool", "tool_call_id": "call_1", "content": "cold"}],
     [WEATHER_TOOL, TIME_TOOL], True, {}),
    ("tools-declared-only", [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Hi"}],
     [WEATHER_TOOL], True, {}),
    ("list-content", [{"role": "user", "content": [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]}],
     None, True, {}),
    ("named-user", [{"role": "user", "name": "alice", "content": "Hi, I am Alice."}], None, True, {}),
    ("enable-thinking-false", [{"role": "user", "content": "Quick answer?"}], None, True, {"enable_thinking": False}),
    ("thinking-true", [{"role": "user", "content": "Deep answer?"}], None, True, {"thinking": True}),
    ("empty-conversation", [], None, True, {}),
]

# (name, source, variables): one Jinja feature each, rendered by transformers' environment.
LANGUAGE = [
    ("print-scalars", "{{ 1 }}|{{ -2 }}|{{ 1.5 }}|{{ true }}|{{ none }}|{{ 'x' }}|{{ undefined_name }}|", {}),
    ("print-floats", "{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 2.0 }} {{ 1/3 }} {{ 1e16 }} {{ 123456789012345.6 }} {{ 10 / 4 }}", {}),
    ("print-containers", "{{ [1, 'a', none, true, 2.5] }} {{ {'k': 'v', 'n': [1]} }} {{ x }}", {"x": {"b": 1, "a": [True, None]}}),
    ("print-string-repr", "{{ ['it\\'s', 'say \"hi\"', 'both \\' \"', 'tab\\tnl\\n', 'é😀', '\\x07'] }}", {}),
    ("arithmetic", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7.5 // 2 }} {{ 2 ** 10 }} {{ -2 ** 2 }} {{ 3 * 'ab' }} {{ [0] * 3 }}", {}),
    ("integers-at-64-bit-edges", "{{ (-9223372036854775807 - 1) % -1 }} {{ 7 // -1 }} {{ 7 % -1 }} {{ (-5) | abs }} {{ 1 ** 1000000000000000000 }} {{ 2 ** 62 }} {{ (-2) ** 63 }} {{ 3 ** 39 }} {{ 'nan' | int(7) }} {{ '2.5' | int }} {{ (-2.5) | int }} {{ '%d' | format(9007199254740993) }} {{ range(9223372036854775806, 9223372036854775807, 5) | list }} {{ 'abc'[1::9223372036854775807] }} {{ 'abc'[::(-9223372036854775807 - 1)] }} {{ [1, 2, 3][1::9223372036854775807] }} {{ 5 is divisibleby(-1) }} {{ (-9223372036854775807 - 1) is divisibleby(-1) }}", {}),
    ("concat-tilde", "{{ 'a' ~ 1 ~ none ~ true ~ missing }}", {}),
    ("precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ not 1 in [1] }} {{ true or false and false }} {{ 'a' ~ 2 * 3 }} {{ 2 if false else 3 if true else 4 }}", {}),
    ("comparisons", "{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 != 2 }} {{ 3 >= 3 }} {{ none == none }} {{ x == y }}", {"x": {"a": 1, "b": 2}, "y": {"b": 2, "a": 1}}),
    ("in-operator", "{{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 'k' in d }} {{ 'z' not in d }} {{ 'q' in missing }}", {"d": {"k": 1}}),
    ("and-or-values", "{{ '' or 'fallback' }} {{ 'first' or 'second' }} {{ 0 and 'x' }} {{ 1 and 'y' }} {{ m.get('name') or m['role'] }}", {"m": {"role": "user"}}),
    ("ternary-without-else", "[{{ 'yes' if false }}]", {}),
    ("string-escapes", "{{ 'a\\nb' }}|{{ \"tab\\there\" }}|{{ 'uni\\u00e9\\U0001F600' }}|{{ 'keep\\d' }}|{{ 'a' 'b' }}", {}),
    ("subscripts", "{{ xs[0] }} {{ xs[-1] }} {{ xs[1:] }} {{ xs[::-1] }} {{ xs[::2] }} {{ s[1:4] }} {{ s[-2:] }} {{ s[::-1] }} {{ d['a']['b'] }} {{ d.a.b }} {{ xs.1 }}",
     {"xs": [1, 2, 3, 4], "s": "héllo", "d": {"a": {"b": "deep"}}}),
    ("missing-items-are-undefined", "[{{ xs[9] }}][{{ d.nope }}][{{ d['nope'] is defined }}][{{ xs[9] is undefined }}]", {"xs": [1], "d": {}}),
    ("attribute-of-undefined-fails", "{{ missing.attr }}", {}),
    ("none-attribute-is-undefined", "[{{ n.attr is defined }}]", {"n": None}),
    ("string-methods", "{{ s.upper() }} {{ s.lower() }} {{ s.title() }} {{ s.capitalize() }} {{ s.replace('o', '0') }} {{ s.replace('o', '0', 1) }} {{ s.find('o') }} {{ s.count('o') }} {{ s.startswith('He') }} {{ s.endswith(('x', 'ld')) }}",
     {"s": "Hello wOrld"}),
    ("split-and-strip", "{{ s.split() }} {{ s.split(None, 1) }} {{ s.split(',') }} {{ s.rsplit(',', 1) }} {{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ t.strip('x') }}|{{ t.lstrip('x') }} {{ u.splitlines() }}",
     {"s": "  a,b  c ,d  ", "t": "xxhixx", "u": "one\ntwo\r\nthree"}),
    ("split-think", "{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}|{{ c.split('</think>', 1)[1] }}",
     {"c": "<think>\nreason\n</think>\n\nanswer"}),
    ("join-method", "{{ ', '.join(xs) }}", {"xs": ["a", "b", "c"]}),
    ("dict-methods", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 'dflt') }}",
     {"d": {"b": 2, "a": 1}}),
    ("filters-basic", "{{ xs | length }} {{ s | length }} {{ s | upper }} {{ s | lower }} {{ s | title }} {{ s | capitalize }} {{ '  pad  ' | trim }}|{{ xs | first }} {{ xs | last }} {{ xs | join('-') }} {{ xs | reverse | list }} {{ s | reverse }}",
     {"xs": [3, 1, 2], "s": "ünïcode words"}),
    ("filters-convert", "{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3 | float }} {{ 2.567 | round(1) }} {{ 2.5 | round }} {{ -3 | abs }} {{ 12 | string }} {{ [1] | string }}", {}),
    ("filter-default", "{{ missing | default('d') }} {{ '' | default('e') }} {{ '' | default('e', true) }} {{ none | default('n') }} {{ missing | d('short') }}", {}),
    ("filter-replace-items", "{{ 'aaa' | replace('a', 'b', 2) }} {{ d | items | list }} {{ 'ab' | replace('', '-') }}", {"d": {"x": 1, "y": 2}}),
    ("filter-tojson", "{{ v | tojson }}\n{{ v | tojson(indent=2) }}\n{{ s | tojson }} {{ [] | tojson }} {{ {} | tojson(indent=4) }} {{ 1.0 | tojson }} {{ none | tojson }}",
     {"v": {"name": "f", "args": [1, 2.5, True, None, "é\"\\/\n\u0001"], "nested": {"z": {}, "a": []}}, "s": "<tag> & 'q'"}),
    ("filter-select-map", "{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }} {{ ms | rejectattr('role', 'eq', 'user') | list | length }} {{ xs | select('odd') | list }} {{ xs | reject('even') | list }} {{ xs | map('string') | join }} {{ ms | map(attribute='missing', default='-') | list }}",
     {"ms": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], "xs": [1, 2, 3, 4, 5]}),
    ("filter-sort-unique-sum", "{{ xs | sort }} {{ xs | sort(reverse=true) }} {{ ws | sort }} {{ xs | unique | list }} {{ xs | sum }} {{ xs | min }} {{ xs | max }} {{ ds | sort(attribute='n') | map(attribute='n') | list }}",
     {"xs": [3, 1, 2, 3], "ws": ["b", "A", "a", "C"], "ds": [{"n": 2}, {"n": 1}]}),
    ("filter-indent", "{{ t | indent(2) }}|{{ t | indent(2, true) }}|{{ t | indent(3, first=true, blank=true) }}", {"t": "a\n\nb\nc"}),
    ("filter-format-escape", "{{ '%s is %d' | format('x', 3) }} {{ '%s-%s' % ('a', 'b') }} {{ '<&>' | e }} {{ '100%%' % () }}", {}),
    ("tests", "{{ 1 is number }} {{ 1 is integer }} {{ 1.0 is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ 's' is string }} {{ d is mapping }} {{ xs is iterable }} {{ xs is sequence }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ none is none }} {{ 1 is not none }} {{ x is true }} {{ x is false }} {{ 'AB' is upper }} {{ 'ab' is lower }} {{ 2 is in [1, 2] }} {{ 2 is eq 2 }} {{ 3 is gt 2 }} {{ range is callable }}",
     {"d": {}, "xs": [], "x": True}),
    ("whitespace-trim-lstrip", "<ul>\n  {% for x in xs %}\n    <li>{{ x }}</li>\n  {% endfor %}\n</ul>\n", {"xs": [1, 2]}),
    ("whitespace-dash", "a   {%- if true -%}   b   {%- endif -%}   c\n{{- ' d ' -}}\n  e", {}),
    ("whitespace-plus", "x\n    {%+ if true %}y{% endif +%}\nz", {}),
    ("whitespace-comment", "a\n  {# a comment #}\nb {#- strip -#} c", {}),
    ("whitespace-print-not-lstripped", "line\n    {{ 'v' }}\n    {% if true %}t{% endif %}", {}),
    ("trailing-newline-dropped", "text\n", {}),
    ("loop-variables", "{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.previtem }}/{{ loop.nextitem }}/{{ loop.cycle('o', 'e') }};{% endfor %}",
     {"xs": ["a", "b", "c"]}),
    ("loop-else-filter-break-continue", "{% for x in [] %}no{% else %}empty{% endfor %} {% for x in xs if x > 1 %}{{ x }}:{{ loop.length }} {% endfor %}{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
     {"xs": [1, 2, 3, 4, 5]}),
    ("loop-over-dict-and-string", "{% for k in d %}{{ k }}{% endfor %} {% for c in 'hé😀' %}[{{ c }}]{% endfor %} {% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}", {"d": {"z": 1, "a": 2}}),
    ("set-scoping", "{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + 10 %}{{ x }} {% endfor %}{{ x }} {% set ns = namespace(n=0, items=[]) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }} {% set a, b = 1, 2 %}{{ a }}{{ b }}",
     {}),
    ("set-block", "{% set greeting %}Hello {{ name }}!{% endset %}[{{ greeting }}]", {"name": "Ann"}),
    ("set-attribute-of-dict-fails", "{% set d.x = 1 %}", {"d": {}}),
    ("macros", "{% macro tag(name, cls='c', body=none) -%}<{{ name }} class={{ cls }}>{{ body if body else '' }}</{{ name }}>{%- endmacro %}{{ tag('a') }}{{ tag('b', 'd') }}{{ tag('i', body='x') }}{{ tag(cls='k', name='p') }}",
     {}),
    ("macro-sees-top-level", "{% set top = 'T' %}{% macro m() %}{{ top }}{{ arg }}{% endmacro %}{% for arg in [1] %}{{ m() }}{% endfor %}", {}),
    ("generation-block", "{% generation %}assistant text{% endgeneration %}", {}),
    ("range-and-namespace", "{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(5, 0, -2) | list }} {{ namespace(a=1).a }} {{ dict(x=1, y='z') }}", {}),
    ("raise-exception", "{{ raise_exception('Conversation roles must alternate') }}", {}),
    ("undefined-plus-string-fails", "{{ missing + 'x' }}", {}),
    ("none-plus-string-fails", "{{ none + 'x' }}", {}),
    ("list-append-refused", "{% set xs = [] %}{{ xs.append(1) }}", {}),
    ("unknown-filter-fails", "{{ 'x' | no_such_filter }}", {}),
    ("literals", "{{ [1, [2, 3], {'a': (4, 5)}] }} {{ () }} {{ (1,) }} {{ True }} {{ False }} {{ None }} {{ {'trailing': 1,} }} {{ [1, 2,] }}", {}),
    ("nested-braces-in-print", "{{ {'a': {'b': 1}} }}", {}),
    ("unicode-case-and-length", "{{ 'ÉCOLE straße' | lower }} {{ 'ǆ' | upper }} {{ '😀é' | length }}", {}),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="a tokenizer.json (any: only its chat-template path is used)")
    ap.add_argument("--out", default=os.path.join(HERE, "chat_template_goldens.json"))
    args = ap.parse_args()

    cases = []
    for template, family in TEMPLATES.items():
        with open(os.path.join(HERE, "..", "..", "tools", "data", "chat_templates", template), encoding="utf-8") as f:
            source = f.read()
        tok = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer, **SPECIAL[family])
        for name, messages, tools, agp, kwargs in CONVERSATIONS:
            case = {"name": f"{template}/{name}", "template": template, "special_tokens": tok.special_tokens_map,
                    "messages": messages, "tools": tools, "add_generation_prompt": agp, "kwargs": kwargs}
            try:
                case["expected"] = tok.apply_chat_template(messages, tools=tools, chat_template=source, tokenize=False,
                                                           add_generation_prompt=agp, **kwargs)
                case["error"] = False
            except Exception as e:  # noqa: BLE001 - any failure of the oracle is the expected outcome
                case["expected"], case["error"] = None, True
                case["oracle_error"] = f"{type(e).__name__}: {e}"
            cases.append(case)
    for name, source, variables in LANGUAGE:
        case = {"name": f"language/{name}", "source": source, "variables": variables}
        try:
            case["expected"] = _compile_jinja_template(source).render(**variables)
            case["error"] = False
        except Exception as e:  # noqa: BLE001
            case["expected"], case["error"] = None, True
            case["oracle_error"] = f"{type(e).__name__}: {e}"
        cases.append(case)

    out = {"generator": "tests/text/make_chat_template_goldens.py", "transformers": transformers.__version__,
           "jinja2": jinja2.__version__, "cases": cases}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum(c["error"] for c in cases)
    print(f"wrote {len(cases)} cases ({errors} expected errors) to {args.out}")


if __name__ == "__main__":
    main()
