// libFuzzer target for the tokenizers. The first byte picks what the rest is:
//   0: a tokenizer.json;  1: a tiktoken.model (with a fixed tokenizer_config.json);
//   2: text, encoded by a fixed byte-level BPE and by a fixed tiktoken tokenizer.
// Reading must return a status, never crash; an accepted tokenizer encodes sample text. Text must
// encode to ids of the vocabulary, decode to valid UTF-8, and stream (one id at a time) to
// exactly what decoding all ids gives — a violated property aborts.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "text/tokenizer_files.h"
#include "text/utf8.h"

namespace {

std::string Scratch(const char* name) {
  char tmpl[] = "/tmp/tokenizer_fuzz.XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  return dir + "/" + name;
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

constexpr char kTokenizerJson[] = R"({
  "added_tokens": [{"id": 300, "content": "<s>", "special": true},
                   {"id": 301, "content": "<t>", "special": false, "lstrip": true, "rstrip": true}],
  "normalizer": {"type": "NFC"},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated"},
    {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [300], "tokens": ["<s>"]}}},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {VOCAB}, "merges": ["Ġ t", "h e", "Ġt he", "i n"]}})";

// A vocabulary of every byte plus a few merges, as byte-level JSON text.
std::string FullTokenizerJson() {
  std::string vocab;
  const std::string bytes_json = [] {
    std::string out;
    for (int b = 0; b < 256; ++b) {
      // The byte-level character of byte b, JSON-escaped through \u.
      int cp = b;
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      static int next = 0x100;
      if (!printable) cp = next++;
      char buf[32];
      std::snprintf(buf, sizeof(buf), "\"\\u%04x\": %d, ", cp, b);
      out += buf;
    }
    return out;
  }();
  vocab = "{" + bytes_json + "\"Ġt\": 256, \"he\": 257, \"Ġthe\": 258, \"in\": 259}";
  std::string json = kTokenizerJson;
  json.replace(json.find("{VOCAB}"), 7, vocab);
  return json;
}

void CheckText(const moe::text::Tokenizer& tok, const std::string& text) {
  const std::vector<int32_t> ids = tok.Encode(text, true);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.size()) std::abort();
  }
  for (bool skip : {false, true}) {
    const std::string decoded = tok.Decode(ids, skip).value();
    if (moe::text::LossyUtf8(decoded) != decoded) std::abort();
    moe::text::StreamDecoder stream(tok, skip);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Push(id).value();
    if (streamed + stream.Finish() != decoded) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::shared_ptr<const moe::text::Tokenizer> bpe = [] {
    const std::string path = Scratch("tokenizer.json");
    Write(path, FullTokenizerJson());
    return moe::text::LoadTokenizer(path.substr(0, path.rfind('/'))).value();
  }();
  static const std::shared_ptr<const moe::text::Tokenizer> tiktoken = [] {
    const std::string path = Scratch("tiktoken.model");
    std::string ranks;
    static const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int b = 0; b < 256; ++b) {
      const char enc[5] = {b64[b >> 2], b64[(b & 3) << 4], '=', '=', 0};
      ranks += std::string(enc) + " " + std::to_string(b) + "\n";
    }
    ranks += "dGg= 256\naGU= 257\n";  // "th", "he"
    Write(path, ranks);
    return moe::text::LoadTokenizer(path.substr(0, path.rfind('/'))).value();
  }();
  static const std::string dir = [] {
    const std::string p = Scratch("x");
    return p.substr(0, p.rfind('/'));
  }();
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
    case 1: {
      const bool json = data[0] % 3 == 0;
      std::remove((dir + "/tokenizer.json").c_str());
      std::remove((dir + "/tiktoken.model").c_str());
      Write(dir + (json ? "/tokenizer.json" : "/tiktoken.model"), rest);
      if (!json) {
        Write(dir + "/tokenizer_config.json",
              R"({"added_tokens_decoder": {"2": {"content": "[EOS]", "special": true}}})");
      }
      auto tok = moe::text::LoadTokenizer(dir);
      if (tok.ok()) CheckText(**tok, "Hello the world, 1234 你好 🚀 <s>[EOS]");
      break;
    }
    default:
      CheckText(*bpe, rest);
      CheckText(*tiktoken, rest);
  }
  return 0;
}
