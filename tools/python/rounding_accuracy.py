#!/usr/bin/env python3
"""Measures what the rounding options cost in accuracy (the figures quoted in README.md):
  --what weights-fp8      `--weights-dtype fp8` against `stored` (float32 checkpoints' projections
                          rounded to fp8 blocks at load)
  --what activations-bf16 `--activations bf16` against `f32` (x rounded to bf16 in the products
                          with bf16 and fp8 projections)
  --what activations-int8 `--activations int8` against `f32` (x rounded to int8 per 32 columns in
                          the int4 products, to bf16 in the bf16 ones)

1. Against the HF transformers goldens (tests/golden/data): for each golden case of the format the
   option applies to (f32 for weights-fp8, fp8 and bf16 for activations-bf16, int4 for
   activations-int8), the checkpoint is rewritten
   by moe-make-model, generated from with the option off and on, and compared with the golden
   logits of the prompt's last position and greedy tokens.
2. On a checkpoint given with --model (e.g. models/small-dsv3-bf16, models/small-dsv3-int4): the
   option off against on, on random prompts.

Prints the largest |difference| of the prefill logits over the largest |logit|, and how many greedy
tokens agree before the first difference. Needs numpy.
Usage: python3 tools/python/rounding_accuracy.py --what WHAT [--build-dir build] [--model DIR]
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "data")
# Per option: the golden cases' dtypes, the flag, its value off and on.
OPTIONS = {
    "weights-fp8": (("f32",), "--weights-dtype", "stored", "fp8"),
    "activations-bf16": (("fp8", "bf16"), "--activations", "f32", "bf16"),
    "activations-int8": (("int4",), "--activations", "f32", "int8"),
}


def generate(build, model, prompt, flag, value, out):
    r = subprocess.run([os.path.join(build, "tools", "moe-generate"), "--model", model,
                        "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", "16",
                        "--ignore-eos", flag, value, "--logits-out", out],
                       capture_output=True, text=True, check=True)
    return [int(t) for t in r.stdout.split()], np.load(out)


def agreeing(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", required=True, choices=sorted(OPTIONS))
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--model")
    args = ap.parse_args()
    dtypes, flag, off, on = OPTIONS[args.what]
    manifest = json.load(open(os.path.join(GOLDEN, "manifest.json")))
    tmp = tempfile.mkdtemp()
    for case, c in manifest["cases"].items():
        if c["dtype"] not in dtypes:
            continue
        model = os.path.join(tmp, case)
        subprocess.run([os.path.join(args.build_dir, "tools", "moe-make-model"), "--preset", c["preset"],
                        "--dtype", c["dtype"], "--seed", str(c["seed"]), "--out", model],
                       check=True, stderr=subprocess.DEVNULL)
        for value in (off, on):
            err, agree, total = 0.0, 0, 0
            for i, prompt in enumerate(c["prompts"]):
                toks, logits = generate(args.build_dir, model, prompt, flag, value, os.path.join(tmp, "l.npy"))
                ref = np.load(os.path.join(GOLDEN, c["logits"][i]))
                err = max(err, float(np.abs(logits[0] - ref[0]).max() / np.abs(ref[0]).max()))
                agree += agreeing(toks, c["tokens"][i])
                total += len(c["tokens"][i])
            print(f"{case} {flag} {value} vs transformers: prefill logits max rel err {err:.2e}, "
                  f"greedy tokens agreeing before the first difference {agree}/{total}")
    if args.model:
        rng = np.random.default_rng(5)
        vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
        err, agree, total = 0.0, 0, 0
        for i in range(4):
            prompt = [int(x) for x in rng.integers(2, vocab, size=32)]
            a = generate(args.build_dir, args.model, prompt, flag, off, os.path.join(tmp, "a.npy"))
            b = generate(args.build_dir, args.model, prompt, flag, on, os.path.join(tmp, "b.npy"))
            err = max(err, float(np.abs(a[1][0] - b[1][0]).max() / np.abs(a[1][0]).max()))
            agree += agreeing(a[0], b[0])
            total += 16
        print(f"{args.model}: {flag} {on} vs {off}: prefill logits max rel err {err:.2e}, "
              f"greedy tokens agreeing before the first difference {agree}/{total}")


if __name__ == "__main__":
    main()
