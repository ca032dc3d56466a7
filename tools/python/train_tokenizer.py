#!/usr/bin/env python3
"""Trains the small byte-level BPE that moe-make-model writes into every checkpoint it makes.

Trains HF tokenizers' BpeTrainer on the corpus of tokenizer_corpus.py, with DeepSeek-V3's
pre-tokenizer (its three split regexes, then ByteLevel), and writes the merges in rank order, one
"left right" pair a line in the byte-level alphabet (as GPT-2's merges.txt). The output is
committed as tools/data/bpe-merges.txt; moe-make-model builds each family's tokenizer files
(DeepSeek-V3's tokenizer.json, Kimi K2's tiktoken.model) from it, cut to the preset's vocab size.
Usage: train_tokenizer.py OUT [--vocab 4096]
"""
import argparse
import json

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

import tokenizer_corpus

DEEPSEEK_SPLITS = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), "isolated") for p in DEEPSEEK_SPLITS] +
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(tokenizer_corpus.corpus(10000), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(f"#version: byte-level BPE, {len(merges)} merges, trained by tools/python/train_tokenizer.py\n")
        for m in merges:
            left, right = m if isinstance(m, list) else m.split(" ")
            f.write(f"{left} {right}\n")
    print(f"train_tokenizer: {len(merges)} merges -> {args.out}")


if __name__ == "__main__":
    main()
