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

#include "tests/fuzz/fuzz_tokenizer.h"
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
    Write(path, moe::fuzz::FullTokenizerJson());
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
