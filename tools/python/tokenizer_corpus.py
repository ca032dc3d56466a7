#!/usr/bin/env python3
"""Writes the multilingual corpus the tokenizers are checked on: one JSON string a line.

Deterministic (a fixed seed). English prose with contractions and capitals, Chinese, Japanese,
Korean, code with indentation, emoji (ZWJ sequences, skin tones, flags, keycaps), whitespace
runs (tabs, CRLF, NBSP, U+3000, U+2028, U+0085), numbers in several scripts, mixed scripts with
combining marks (composed and decomposed, which NFC tells apart), special tokens inside text, and
long runs. Usage: tokenizer_corpus.py OUT.jsonl [--lines N]
"""
import argparse
import json
import random
import unicodedata

WORDS = ("the of and to in is was he for it with as his on be at by had are but from or have "
         "an they which one you were all we her she there would their will when who him been "
         "has more if no out so said what up its about than into them can only other time new "
         "some could these two may first then do any like my now over such our man me even most "
         "made after also did many before must through back years where much your way well down "
         "should because each just those people how too little state good very make world still "
         "tokenizer expert attention latent routing gradient shard cluster kernel").split()
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'D"]
PUNCT = list(".,;:!?-()[]{}\"'/\\@#$%^&*_+=<>|~`") + ["...", "--", "—", "–", "…", "«", "»", "“", "”", "‘", "’"]
CJK_PUNCT = list("，。！？、；：「」『』（）《》【】…—·")
EMOJI = ["😀", "😂", "🥹", "🤖", "🚀", "🔥", "✨", "❤️", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇨🇳", "🇺🇸", "🇯🇵",
         "1️⃣", "#️⃣", "🧑🏿‍🔬", "🙇‍♀️", "☕", "⚡", "🫠", "🪐", "👋🏻", "✍🏾"]
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|im_start|>", "<|im_end|>",
            "<|endoftext|>", "[BOS]", "[EOS]", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>",
            "<|begin_of_text|>", "<|eot|>", "<|header_start|>", "<think>", "</think>",
            "<|im_sta", "<｜end▁of", "<|reserved_token_7|>", "[E", "<|"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\u00a0", "\u3000",
          "\u2028", "\u0085", "\u2003", "\u200b", " \t \n", "\n\n\n\n", "    ", "\f", "\v"]


def rand_chars(rng, lo, hi, n):
    return "".join(chr(rng.randint(lo, hi)) for _ in range(n))


def english(rng):
    out = []
    for i in range(rng.randint(3, 25)):
        w = rng.choice(WORDS)
        r = rng.random()
        if r < 0.15 or i == 0:
            w = w.capitalize()
        elif r < 0.2:
            w = w.upper()
        if rng.random() < 0.08:
            w += rng.choice(CONTRACTIONS)
        out.append(w)
        if rng.random() < 0.15:
            out.append(rng.choice(PUNCT))
    return " ".join(out) + rng.choice([".", "!", "?", "", "..."])


def chinese(rng):
    s = ""
    for _ in range(rng.randint(1, 6)):
        s += rand_chars(rng, 0x4E00, 0x9FA5, rng.randint(2, 20))
        if rng.random() < 0.3:
            s += rand_chars(rng, 0x3400, 0x4DB5, 2)  # extension A
        s += rng.choice(CJK_PUNCT)
        if rng.random() < 0.3:
            s += rng.choice([" AI ", "GPU", " 2025年", "DeepSeek-V3", "100%", "Kimi", " "])
    return s


def japanese(rng):
    return (rand_chars(rng, 0x3041, 0x3096, rng.randint(2, 8)) + rand_chars(rng, 0x4E00, 0x9FA5, 3) +
            rand_chars(rng, 0x30A1, 0x30FA, rng.randint(2, 8)) + "ー、" +
            rand_chars(rng, 0xFF66, 0xFF9D, 3) + "。")


def korean(rng):
    s = " ".join(rand_chars(rng, 0xAC00, 0xD7A3, rng.randint(1, 5)) for _ in range(rng.randint(2, 8)))
    return s + rng.choice([".", "?", " ㅋㅋㅋ", ""]) + unicodedata.normalize("NFD", rand_chars(rng, 0xAC00, 0xD7A3, 2))


def code(rng):
    name = rng.choice(WORDS) + "_" + rng.choice(WORDS)
    indent = rng.choice(["    ", "\t", "  "])
    snippets = [
        f"def {name}(x, y=None):\n{indent}if x is None:\n{indent}{indent}return []\n{indent}return [v * 2 for v in x]  # {rng.choice(WORDS)}\n",
        f"for (int i = 0; i < n; ++i) {{\n{indent}out[i] = a[i] * b[i] + c;\n}}\n",
        f'{{"model": "{name}", "layers": {rng.randint(1, 99)}, "ratio": {rng.random():.4f}, "tags": ["a", "b"]}}',
        f"std::vector<int32_t> {name} = tok->Encode(text, /*add_special=*/true);",
        f"SELECT {name}, COUNT(*) FROM t WHERE id >= {rng.randint(0, 10**6)} GROUP BY 1;",
        f"$ ./{name} --flag=value -x 0x{rng.randint(0, 2**32):08X} && echo $?",
        f"<div class=\"{name}\">&nbsp;{rng.choice(WORDS)}</div>\r\n",
        f"x += y**2 // 3; z = x != y ? x<<2 : y>>1; // ok\n\n\n",
    ]
    return rng.choice(snippets)


def numbers(rng):
    parts = [str(rng.randint(0, 10 ** rng.randint(1, 25))), f"{rng.uniform(-1e6, 1e6):.6f}",
             f"{rng.randint(1, 999)},{rng.randint(100, 999)},{rng.randint(100, 999)}",
             f"{rng.random():e}", "٠١٢٣٤٥٦٧٨٩", "１２３４５", "²³¹", "Ⅻ Ⅳ", "½ ¾ ⅓", "१२३", "๑๒๓",
             f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}", "3.14159265358979",
             "2025-12-01T14:25:00Z", "+1 (555) 010-9999"]
    return " ".join(rng.sample(parts, rng.randint(1, 5)))


def mixed(rng):
    pieces = ["Привет, мир! Это тест.", "Γειά σου Κόσμε", "مرحبا بالعالم ١٢٣", "שלום עולם",
              "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt có dấu: ắ ằ ẳ ẵ ặ", "Ελληνικά ΆΈΉ",
              "naïve café résumé", unicodedata.normalize("NFD", "naïve café résumé Ångström"),
              "e\u0301 a\u0308 o\u0303 n\u0303", "ﬁ ﬂ ﬀ Ⅸ ㎏ ℃ ｱｲｳ", "Zürich, München, Kraków",
              "İstanbul ıi ß ẞ", "Ǆ ǅ ǆ ǈ", "ᚠᛇᚻ᛫ᛒᛦᚦ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝓜𝓪𝓽𝓱", "𠀀𠀁𠀂 𪚥",
              "ห้องน้ำ", "ქართული", "Հայերեն", "ᐃᓄᒃᑎᑐᑦ", "ខ្មែរ"]
    return rng.choice(WORDS) + " " + " ".join(rng.sample(pieces, rng.randint(1, 4))) + " " + rng.choice(EMOJI)


def emoji(rng):
    return "".join(rng.choice(EMOJI) + rng.choice(["", " ", "!", "\n"]) for _ in range(rng.randint(1, 8)))


def whitespace(rng):
    return "".join(rng.choice(SPACES) + (rng.choice(WORDS) if rng.random() < 0.5 else "")
                   for _ in range(rng.randint(1, 10)))


def specials(rng):
    a, b = english(rng), chinese(rng)
    return rng.choice(SPECIALS) + a + rng.choice(SPECIALS) + rng.choice(["", " ", "\n"]) + b + rng.choice(SPECIALS)


def long_runs(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return " " * rng.randint(50, 1500) + "x"
    if kind == 1:
        return rng.choice(WORDS) * rng.randint(50, 400)
    if kind == 2:
        return rand_chars(rng, 0x4E00, 0x9FA5, rng.randint(200, 2000))
    if kind == 3:
        return str(rng.randint(0, 9)) * rng.randint(100, 1000)
    return "\n".join(english(rng) for _ in range(rng.randint(10, 40)))


GENERATORS = [(english, 30), (chinese, 14), (japanese, 4), (korean, 3), (code, 12), (numbers, 8),
              (mixed, 10), (emoji, 5), (whitespace, 7), (specials, 5), (long_runs, 2)]


def corpus(lines, seed=20251201):
    rng = random.Random(seed)
    gens = [g for g, w in GENERATORS for _ in range(w)]
    out = ["", " ", "\n", "Hello world", "Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ", "中文English混合",
           "北京市 Pascal", "I'M you'RE they'Ve", "'s 't", "  leading and trailing  "]
    while len(out) < lines:
        g = rng.choice(gens)
        s = g(rng)
        if rng.random() < 0.25:
            s = s + rng.choice(SPACES) + rng.choice(gens)(rng)
        out.append(s)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--lines", type=int, default=10000)
    args = parser.parse_args()
    with open(args.out, "w", encoding="utf-8") as f:
        for line in corpus(args.lines):
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
