// moe-tokenize: a checkpoint's tokenizer from the command line. Encodes text to ids, decodes ids
// to text, or runs a whole JSON-lines corpus (one JSON string a line) and writes, per line, the
// ids, the decoded text and the text streamed id by id, timing the encoding.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "nlohmann/json.hpp"
#include "text/tokenizer_files.h"

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "moe-tokenize: %s\n", message.c_str());
  return 1;
}

std::string Stream(const moe::text::Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                   bool skip_special) {
  moe::text::StreamDecoder decoder(tokenizer, skip_special);
  std::string text;
  for (int32_t id : ids) text += decoder.Push(id).value();
  return text + decoder.Finish();
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, text, decode, jsonl, out;
  bool no_special = false, skip_special = false;
  int64_t repeat = 1;
  moe::FlagParser flags(
      "moe-tokenize",
      "Encodes and decodes with a checkpoint's tokenizer (tokenizer.json or tiktoken.model).\n"
      "  moe-tokenize --model DIR --text 'Hello'        prints the ids\n"
      "  moe-tokenize --model DIR --decode 1,2,3        prints the text\n"
      "  moe-tokenize --model DIR --jsonl IN --out OUT  a corpus: per line {ids, text, stream}");
  flags.AddString("model", &model, "Checkpoint folder holding the tokenizer files.", true);
  flags.AddString("text", &text, "Text to encode.");
  flags.AddString("decode", &decode, "Comma-separated ids to decode.");
  flags.AddString("jsonl", &jsonl, "Corpus: one JSON string a line.");
  flags.AddString("out", &out, "With --jsonl: where to write one JSON object a line.");
  flags.AddBool("no-special", &no_special, "Encode without the BOS/EOS add_special_tokens adds.");
  flags.AddBool("skip-special", &skip_special, "Decode without special tokens.");
  flags.AddInt("repeat", &repeat, "With --jsonl: encode the corpus this many times for timing.");
  flags.ParseOrExit(argc, argv);

  const auto load_start = std::chrono::steady_clock::now();
  auto tokenizer = moe::text::LoadTokenizer(model);
  if (!tokenizer.ok()) return Fail(std::string(tokenizer.status().message()));
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  const moe::text::Tokenizer& tok = **tokenizer;

  if (flags.WasSet("text")) {
    std::printf("%s\n", absl::StrJoin(tok.Encode(text, !no_special), ",").c_str());
    return 0;
  }
  if (flags.WasSet("decode")) {
    std::vector<int32_t> ids;
    for (absl::string_view part : absl::StrSplit(decode, ',', absl::SkipWhitespace())) {
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) return Fail("--decode: \"" + std::string(part) + "\" is not an id");
      ids.push_back(id);
    }
    auto decoded = tok.Decode(ids, skip_special);
    if (!decoded.ok()) return Fail(std::string(decoded.status().message()));
    std::printf("%s\n", decoded->c_str());
    return 0;
  }
  if (jsonl.empty() || out.empty()) return Fail("give --text, --decode, or --jsonl with --out");

  std::ifstream in(jsonl);
  if (!in) return Fail(jsonl + ": cannot open");
  std::vector<std::string> lines;
  size_t bytes = 0;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_string()) {
      return Fail(jsonl + ": line " + std::to_string(lines.size() + 1) + " is not a JSON string");
    }
    lines.push_back(j.get<std::string>());
    bytes += lines.back().size();
  }
  std::vector<std::vector<int32_t>> ids(lines.size());
  const auto start = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < repeat; ++r) {
    for (size_t i = 0; i < lines.size(); ++i) ids[i] = tok.Encode(lines[i], !no_special);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::ofstream o(out);
  if (!o) return Fail(out + ": cannot write");
  for (size_t i = 0; i < lines.size(); ++i) {
    auto decoded = tok.Decode(ids[i], skip_special);
    if (!decoded.ok()) return Fail(std::string(decoded.status().message()));
    nlohmann::json row = {{"ids", ids[i]},
                          {"text", *decoded},
                          {"stream", Stream(tok, ids[i], skip_special)}};
    o << row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  size_t total_ids = 0;
  for (const auto& v : ids) total_ids += v.size();
  std::fprintf(stderr,
               "moe-tokenize: loaded %s in %.2f s; encoded %zu lines (%.2f MB, %zu ids) x%lld in "
               "%.3f s: %.2f MB/s on one thread\n",
               tok.source().c_str(), load_s, lines.size(), bytes / 1e6, total_ids,
               static_cast<long long>(repeat), seconds, bytes * repeat / 1e6 / seconds);
  return 0;
}
