#!/usr/bin/env python3
"""Measures what `--weights-dtype fp8` costs in accuracy (the figures quoted in README.md).

1. Against the HF transformers goldens (tests/golden/data): for each float32 tiny case, the
   checkpoint is rewritten by moe-make-model, generated from with `--weights-dtype stored` and
   `fp8`, and compared with the golden logits of the prompt's last position and greedy tokens.
2. On a bf16 checkpoint given with --bf16-model (e.g. models/small-dsv3-bf16): `stored` against
   `fp8` on random prompts.

Prints the largest |difference| of the prefill logits over the largest |logit|, and how many greedy
tokens agree before the first difference. Needs numpy.
Usage: python3 tools/python/weights_dtype_accuracy.py [--build-dir build] [--bf16-model DIR]
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "data")


def generate(build, model, prompt, mode, out):
    r = subprocess.run([os.path.join(build, "tools", "moe-generate"), "--model", model,
                        "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", "16",
                        "--ignore-eos", "--weights-dtype", mode, "--logits-out", out],
                       capture_output=True, text=True, check=True)
    return [int(t) for t in r.stdout.split()], np.load(out)


def agreeing(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--bf16-model")
    args = ap.parse_args()
    manifest = json.load(open(os.path.join(GOLDEN, "manifest.json")))
    tmp = tempfile.mkdtemp()
    for case, c in manifest["cases"].items():
        if c["dtype"] != "f32":
            continue
        model = os.path.join(tmp, case)
        subprocess.run([os.path.join(args.build_dir, "tools", "moe-make-model"), "--preset", c["preset"],
                        "--dtype", "f32", "--seed", str(c["seed"]), "--out", model],
                       check=True, stderr=subprocess.DEVNULL)
        for mode in ("stored", "fp8"):
            err, agree, total = 0.0, 0, 0
            for i, prompt in enumerate(c["prompts"]):
                toks, logits = generate(args.build_dir, model, prompt, mode, os.path.join(tmp, "l.npy"))
                ref = np.load(os.path.join(GOLDEN, c["logits"][i]))
                err = max(err, float(np.abs(logits[0] - ref[0]).max() / np.abs(ref[0]).max()))
                agree += agreeing(toks, c["tokens"][i])
                total += len(c["tokens"][i])
            print(f"{case} --weights-dtype {mode} vs transformers: prefill logits max rel err {err:.2e}, "
                  f"greedy tokens agreeing before the first difference {agree}/{total}")
    if args.bf16_model:
        rng = np.random.default_rng(5)
        vocab = json.load(open(os.path.join(args.bf16_model, "config.json")))["vocab_size"]
        err, agree, total = 0.0, 0, 0
        for i in range(4):
            prompt = [int(x) for x in rng.integers(2, vocab, size=32)]
            a = generate(args.build_dir, args.bf16_model, prompt, "stored", os.path.join(tmp, "a.npy"))
            b = generate(args.build_dir, args.bf16_model, prompt, "fp8", os.path.join(tmp, "b.npy"))
            err = max(err, float(np.abs(a[1][0] - b[1][0]).max() / np.abs(a[1][0]).max()))
            agree += agreeing(a[0], b[0])
            total += 16
        print(f"{args.bf16_model}: fp8 vs stored: prefill logits max rel err {err:.2e}, "
              f"greedy tokens agreeing before the first difference {agree}/{total}")


if __name__ == "__main__":
    main()
