"""Runs llama.cpp's convert_hf_to_gguf.py on a checkpoint written by moe-make-model.

The generated tokenizer is not one of the published tokenizers the converter recognises by hash,
so its pre-tokenizer is named here: DeepSeek-V3's, which is the one moe-make-model writes. The
token ids do not matter to llama-bench, which feeds random tokens.

Usage: python convert.py LLAMA_CPP_DIR CHECKPOINT_DIR OUT.gguf [converter options...]
"""
import runpy
import sys
from pathlib import Path

llama_cpp, checkpoint, out, *rest = sys.argv[1:]
sys.path[:0] = [llama_cpp, str(Path(llama_cpp) / "gguf-py")]

from conversion import base  # noqa: E402  (llama.cpp's package, found through sys.path above)

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"
sys.argv = ["convert_hf_to_gguf.py", checkpoint, "--outfile", out, *rest]
runpy.run_path(str(Path(llama_cpp) / "convert_hf_to_gguf.py"), run_name="__main__")
