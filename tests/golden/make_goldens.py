#!/usr/bin/env python3
"""Makes the golden outputs the engine is tested against, with HF transformers as the oracle.

For each case (a preset checkpoint written by moe-make-model), loads the checkpoint into
transformers' model class for its architecture (DeepseekV3ForCausalLM, Qwen3ForCausalLM,
Qwen3MoeForCausalLM, MistralForCausalLM, SmolLM3ForCausalLM, Olmo2ForCausalLM, Gemma3ForCausalLM,
Llama4ForCausalLM; CPU, float32, eager attention), runs greedy generation on
several prompts by recomputing the full sequence at every step (no KV cache), and writes

  tests/golden/data/<case>/prompt<i>.npy   float32 logits [1 + steps, vocab]: the prompt's last
                                           position, then the position after each new token
  tests/golden/data/manifest.json          prompts, greedy tokens, checkpoint checksums, versions

The checkpoint is loaded by this script, not by transformers' loader: per-expert tensors are
stacked into transformers' [experts, 2*inter, hidden] layout and compact weights are dequantized
here, independently of the C++ reader: fp8 value x its 128x128 block's weight_scale_inv; int4
(compressed-tensors pack-quantized) nibble - 8 x its group's bf16 weight_scale.

The MTP layer (model.layers.<num_hidden_layers>.*), which transformers does not run, is checked
against a torch implementation written here from the DeepSeek-V3 report's equations (section 2.2):
for row i, x = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)]) with h_i the main model's final
hidden state (after model.norm), then the layer's decoder block (transformers'
DeepseekV3DecoderLayer with the layer's weights, causal attention over the rows, positions i),
then shared_head.head(shared_head.norm(x)). `--mtp` writes

  tests/golden/data/mtp/<case>-prompt<i>.npy  float32 MTP logits [n, vocab], one row per prompt
                                              position; t_{i+1} for the last one is the case's
                                              first greedy token
  manifest.json "mtp": its prompts, next tokens and files

Usage (needs torch, transformers, safetensors, numpy; CI does not run this):
  python3 tests/golden/make_goldens.py --build-dir build [--mtp]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

# (case, preset, dtype, seed, prompt lengths). Lengths: 1; 17 crosses 16-token KV blocks; 70 is
# past original_max_position_embeddings (64) of the YaRN presets and crosses a 64-token block.
CASES = [
    ("tiny-dsv3-f32", "tiny-dsv3", "f32", 11, [1, 17, 70]),
    ("tiny-kimi-k2-f32", "tiny-kimi-k2", "f32", 12, [1, 17, 70]),
    ("tiny-v2lite-f32", "tiny-v2lite", "f32", 13, [1, 17, 40]),
    ("tiny-dsv3-fp8", "tiny-dsv3", "fp8", 14, [5, 33]),
    ("tiny-kimi-k2-int4", "tiny-kimi-k2", "int4", 15, [5, 33]),
    # The GQA families: 17 and 70 cross 16- and 64-token KV blocks.
    ("tiny-qwen3-f32", "tiny-qwen3", "f32", 21, [1, 17, 70]),
    ("tiny-qwen3-moe-f32", "tiny-qwen3-moe", "f32", 22, [1, 17, 70]),
    ("tiny-qwen3-moe-bf16", "tiny-qwen3-moe", "bf16", 23, [5, 33]),
    ("tiny-mistral-f32", "tiny-mistral", "f32", 24, [1, 17, 70]),
    ("tiny-smollm3-f32", "tiny-smollm3", "f32", 25, [1, 17, 70]),
    ("tiny-olmo2-f32", "tiny-olmo2", "f32", 26, [1, 17, 70]),
    # Gemma 3: a sliding window of 8, shorter than the prompts.
    ("tiny-gemma3-f32", "tiny-gemma3", "f32", 27, [1, 17, 70]),
    ("tiny-gemma3-bf16", "tiny-gemma3", "bf16", 28, [5, 33]),
    # Llama 4: attention chunks of 8 and temperature tuning from position 7 (floor_scale 8).
    ("tiny-llama4-f32", "tiny-llama4", "f32", 29, [1, 17, 70]),
    ("tiny-llama4-bf16", "tiny-llama4", "bf16", 30, [5, 33]),
]
DECODE_STEPS = 16


def fnv1a64(path):
    h = 0xCBF29CE484222325
    data = np.fromfile(path, dtype=np.uint8)
    for b in data.tobytes():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def prompt_ids(vocab, length, seed):
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(2, vocab, size=length)]


def raw_weights(ckpt, cfg):
    """Every tensor of the checkpoint, dequantized to float32, by its checkpoint name."""
    tensors = {}
    index = os.path.join(ckpt, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
        else ["model.safetensors"]
    for f in files:
        tensors.update(load_file(os.path.join(ckpt, f)))
    out = {}
    group = (cfg.get("quantization_config") or {}).get("config_groups", {}).get("group_0", {}) \
        .get("weights", {}).get("group_size")
    for name, t in tensors.items():
        if name.endswith("_scale_inv") or name.endswith(".weight_scale") or \
                name.endswith(".weight_shape"):
            continue
        if name.endswith(".weight_packed"):
            module = name[: -len(".weight_packed")]
            rows, cols = (int(v) for v in tensors[module + ".weight_shape"])
            shifts = torch.arange(8, dtype=torch.int32) * 4
            q = ((t.unsqueeze(-1) >> shifts) & 0xF).reshape(rows, cols).float() - 8.0
            s = tensors[module + ".weight_scale"].float().repeat_interleave(group, 1)
            out[module + ".weight"] = q * s
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = tensors[name + "_scale_inv"].float()
            rows, cols = t.shape
            s = s.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
            t = t.float() * s
        out[name] = t.float()
    return out


def stacked_experts(out, p, n_experts):
    """transformers' fused expert tensors of the MoE whose weights start with `p` ("...mlp.")."""
    return {
        p + "experts.gate_up_proj": torch.stack([
            torch.cat([out[f"{p}experts.{e}.gate_proj.weight"], out[f"{p}experts.{e}.up_proj.weight"]])
            for e in range(n_experts)]),
        p + "experts.down_proj": torch.stack(
            [out[f"{p}experts.{e}.down_proj.weight"] for e in range(n_experts)]),
    }


def load_weights(ckpt, cfg):
    out = raw_weights(ckpt, cfg)
    sd = {}
    n_layers = cfg["num_hidden_layers"]
    for name, t in out.items():
        parts = name.split(".")
        if parts[0] == "model" and parts[1] == "layers" and int(parts[2]) >= n_layers:
            continue  # MTP layers: not part of the decoder
        if ".mlp.experts." in name:
            continue
        sd[name] = t
    for l in range(n_layers):
        p = f"model.layers.{l}.mlp."
        if f"{p}experts.0.gate_proj.weight" not in out:
            continue
        sd.update(stacked_experts(out, p, cfg.get("n_routed_experts") or cfg["num_experts"]))
    return sd


def hf_model(ckpt):
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    if cfg["architectures"] != ["DeepseekV3ForCausalLM"]:
        config = transformers.AutoConfig.from_pretrained(ckpt)
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
        assert type(model).__name__ == cfg["architectures"][0]
        missing, unexpected = model.load_state_dict(load_weights(ckpt, cfg), strict=False)
        assert not unexpected, unexpected
        # Tied embeddings: lm_head is the embedding's parameter, not in the files.
        assert missing == (["lm_head.weight"] if cfg["tie_word_embeddings"] else []), missing
        if cfg["tie_word_embeddings"]:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        return model, cfg
    hf_cfg = dict(cfg)
    hf_cfg.pop("model_type", None)  # kimi_k2 is this architecture under another name
    hf_cfg.pop("quantization_config", None)  # dequantized here
    rs = cfg.get("rope_scaling")
    if rs:
        # The engine, like transformers 5, uses rope_scaling.factor; the presets keep it equal to
        # max_position_embeddings / original_max_position_embeddings, as the real checkpoints do.
        assert rs["factor"] * rs["original_max_position_embeddings"] == cfg["max_position_embeddings"]
    config = DeepseekV3Config(**hf_cfg)
    config._attn_implementation = "eager"
    model = DeepseekV3ForCausalLM(config).float().eval()
    missing, unexpected = model.load_state_dict(load_weights(ckpt, cfg), strict=False)
    assert not unexpected, unexpected
    assert not missing, missing
    return model, cfg


@torch.no_grad()
def greedy(model, prompt, steps):
    ids = list(prompt)
    rows, new = [], []
    for i in range(steps + 1):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        assert torch.isfinite(logits).all()
        rows.append(logits.numpy().copy())
        if i < steps:
            tok = int(torch.argmax(logits))
            new.append(tok)
            ids.append(tok)
    return np.stack(rows).astype(np.float32), new


# (case, prompt lengths) of the MTP goldens: the case's checkpoint, its first greedy token.
MTP_CASES = [("tiny-dsv3-f32", [1, 17, 70])]


@torch.no_grad()
def mtp_logits(model, raw, cfg, prompt, next_tokens):
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
        DeepseekV3DecoderLayer, DeepseekV3RMSNorm)
    L = cfg["num_hidden_layers"]
    p = f"model.layers.{L}."

    def rms(x, w):
        norm = DeepseekV3RMSNorm(x.shape[-1], eps=cfg["rms_norm_eps"])
        norm.weight.data = w.clone()
        return norm(x)

    n = len(prompt)
    h = model.model(torch.tensor([prompt])).last_hidden_state[0]  # after model.norm
    e = raw[p + "embed_tokens.weight"][torch.tensor(next_tokens)]
    x = torch.cat([rms(e, raw[p + "enorm.weight"]), rms(h, raw[p + "hnorm.weight"])], dim=-1)
    x = x @ raw[p + "eh_proj.weight"].T
    block = DeepseekV3DecoderLayer(model.config, layer_idx=L).float().eval()
    own = {p + k for k in ("embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight",
                           "shared_head.norm.weight", "shared_head.head.weight")}
    sd = {k[len(p):]: v for k, v in raw.items()
          if k.startswith(p) and k not in own and ".mlp.experts." not in k}
    sd.update({k[len(p):]: v for k, v in
               stacked_experts(raw, p + "mlp.", cfg["n_routed_experts"]).items()})
    block.load_state_dict(sd, strict=True)
    pos = torch.arange(n)[None]
    cos_sin = model.model.rotary_emb(x[None], pos)
    mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
    y = block(x[None], attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
    y = (y[0] if isinstance(y, tuple) else y)[0]
    logits = rms(y, raw[p + "shared_head.norm.weight"]) @ raw[p + "shared_head.head.weight"].T
    assert torch.isfinite(logits).all()
    return logits.numpy().astype(np.float32)


def make_mtp_goldens(maker, manifest):
    os.makedirs(os.path.join(DATA, "mtp"), exist_ok=True)
    entry = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
             "cases": {}}
    for case, lengths in MTP_CASES:
        spec = manifest["cases"][case]
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, case)
            subprocess.run([maker, "--preset", spec["preset"], "--out", ckpt, "--dtype", spec["dtype"],
                            "--seed", str(spec["seed"])], check=True, stderr=subprocess.DEVNULL)
            assert fnv1a64(os.path.join(ckpt, "model.safetensors")) == spec["checkpoint_fnv1a64"]
            model, cfg = hf_model(ckpt)
            raw = raw_weights(ckpt, cfg)
            c = {"prompts": [], "next_tokens": [], "logits": []}
            for i, n in enumerate(lengths):
                prompt = spec["prompts"][i]
                assert len(prompt) == n
                nxt = prompt[1:] + [spec["tokens"][i][0]]
                rel = f"mtp/{case}-prompt{i}.npy"
                np.save(os.path.join(DATA, rel), mtp_logits(model, raw, cfg, prompt, nxt))
                c["prompts"].append(prompt)
                c["next_tokens"].append(nxt)
                c["logits"].append(rel)
                print(f"{case}: MTP over prompt {i} ({n} tokens)", file=sys.stderr)
            entry["cases"][case] = c
    manifest["mtp"] = entry


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--case", action="append", default=[],
                    help="make only this case (repeatable); the manifest keeps the others")
    ap.add_argument("--mtp", action="store_true",
                    help="make only the MTP goldens (from the cases already in the manifest)")
    args = ap.parse_args()
    maker = os.path.join(args.build_dir, "tools", "moe-make-model")
    manifest_path = os.path.join(DATA, "manifest.json")
    if args.mtp:
        with open(manifest_path) as f:
            manifest = json.load(f)
        make_mtp_goldens(maker, manifest)
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        return
    torch.manual_seed(0)
    manifest = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
                "decode_steps": DECODE_STEPS, "cases": {}}
    if args.case:
        unknown = set(args.case) - {c[0] for c in CASES}
        assert not unknown, f"unknown cases {sorted(unknown)}"
        with open(manifest_path) as f:
            manifest = json.load(f)  # top-level versions: those of the last full run
    for case, preset, dtype, seed, lengths in CASES:
        if args.case and case not in args.case:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, case)
            subprocess.run([maker, "--preset", preset, "--out", ckpt, "--dtype", dtype, "--seed", str(seed)],
                           check=True, stderr=subprocess.DEVNULL)
            checksum = fnv1a64(os.path.join(ckpt, "model.safetensors"))
            model, cfg = hf_model(ckpt)
            os.makedirs(os.path.join(DATA, case), exist_ok=True)
            entry = {"preset": preset, "dtype": dtype, "seed": seed, "checkpoint_fnv1a64": checksum,
                     "transformers_version": transformers.__version__,
                     "torch_version": torch.__version__,
                     "prompts": [], "tokens": [], "logits": []}
            for i, n in enumerate(lengths):
                prompt = prompt_ids(cfg["vocab_size"], n, seed * 100 + i)
                logits, new = greedy(model, prompt, DECODE_STEPS)
                rel = f"{case}/prompt{i}.npy"
                np.save(os.path.join(DATA, rel), logits)
                entry["prompts"].append(prompt)
                entry["tokens"].append(new)
                entry["logits"].append(rel)
                print(f"{case}: prompt {i} ({n} tokens) -> {new}", file=sys.stderr)
            manifest["cases"][case] = entry
    if not args.case or any(c in args.case for c, _ in MTP_CASES):
        make_mtp_goldens(maker, manifest)  # they read the cases' prompts and greedy tokens
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
