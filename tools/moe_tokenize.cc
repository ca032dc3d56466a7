// moe-tokenize: a checkpoint's tokenizer from the command line. Encodes text to ids, decodes ids
// to text, or runs a whole JSON-lines corpus (one JSON string a line) and writes, per line, the
// ids, the decoded text and the text streamed id by id, timing the encoding.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "nlohmann/json.hpp"
#include "text/chat_template.h"
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

std::string ReadAll(std::istream& in) {
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// --chat: the rendered prompt on stdout.
int RenderChat(const std::string& model, const std::string& request, const std::string& template_file) {
  std::string body_text;
  if (request == "-") {
    body_text = ReadAll(std::cin);
  } else {
    std::ifstream in(request, std::ios::binary);
    if (!in) return Fail("--chat: cannot read " + request);
    body_text = ReadAll(in);
  }
  const auto body = nlohmann::ordered_json::parse(body_text, nullptr, false);
  if (body.is_discarded()) return Fail("--chat: " + request + " is not JSON");
  auto conversation = moe::text::Conversation::FromRequest(body);
  if (!conversation.ok()) return Fail(std::string(conversation.status().message()));
  absl::StatusOr<std::optional<moe::text::ChatTemplate>> chat_template = std::nullopt;
  if (!template_file.empty()) {
    std::ifstream in(template_file, std::ios::binary);
    if (!in) return Fail("--chat-template: cannot read " + template_file);
    std::ifstream config(model + "/tokenizer_config.json");
    const auto special = config ? nlohmann::ordered_json::parse(ReadAll(config), nullptr, false)
                                : nlohmann::ordered_json::object();
    auto t = moe::text::ChatTemplate::FromSource(ReadAll(in), special, template_file);
    if (!t.ok()) return Fail(std::string(t.status().message()));
    chat_template = std::optional<moe::text::ChatTemplate>(*std::move(t));
  } else {
    chat_template = moe::text::ChatTemplate::Load(model);
  }
  if (!chat_template.ok()) return Fail(std::string(chat_template.status().message()));
  if (!chat_template->has_value()) return Fail(model + " has no chat template (give --chat-template)");
  auto prompt = (*chat_template)->Render(*conversation);
  if (!prompt.ok()) return Fail(std::string(prompt.status().message()));
  std::fwrite(prompt->data(), 1, prompt->size(), stdout);
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, text, decode, jsonl, decode_jsonl, out, chat, chat_template;
  bool no_special = false, skip_special = false;
  int64_t repeat = 1;
  moe::FlagParser flags(
      "moe-tokenize",
      "Encodes and decodes with a checkpoint's tokenizer (tokenizer.json or tiktoken.model).\n"
      "  moe-tokenize --model DIR --text 'Hello'        prints the ids\n"
      "  moe-tokenize --model DIR --decode 1,2,3        prints the text\n"
      "  moe-tokenize --model DIR --jsonl IN --out OUT  a corpus: per line {ids, text, stream}\n"
      "  moe-tokenize --model DIR --decode-jsonl IN --out OUT  id lists: per line {text, stream}\n"
      "  moe-tokenize --model DIR --chat REQUEST.json   the prompt the chat template renders for an\n"
      "                                                 OpenAI chat request body ('-': stdin)");
  flags.AddString("model", &model, "Checkpoint folder holding the tokenizer files.", true);
  flags.AddString("text", &text, "Text to encode.");
  flags.AddString("decode", &decode, "Comma-separated ids to decode.");
  flags.AddString("jsonl", &jsonl, "Corpus: one JSON string a line.");
  flags.AddString("decode-jsonl", &decode_jsonl, "Id lists to decode: one JSON list of ids a line.");
  flags.AddString("out", &out, "With --jsonl or --decode-jsonl: where to write one JSON object a line.");
  flags.AddString("chat", &chat, "An OpenAI chat request body (messages, tools, add_generation_prompt, "
                  "chat_template_kwargs) to render with the checkpoint's chat template.");
  flags.AddString("chat-template", &chat_template, "With --chat: a Jinja file to use instead of the checkpoint's.");
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

  if (flags.WasSet("chat")) return RenderChat(model, chat, chat_template);
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
  if (!decode_jsonl.empty()) {
    std::ifstream in(decode_jsonl);
    std::ofstream o(out);
    if (!in || !o) return Fail("--decode-jsonl needs a readable file and --out");
    int n = 0;
    for (std::string line; std::getline(in, line);) {
      ++n;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_array()) return Fail(decode_jsonl + ": line " + std::to_string(n) + " is not a list");
      std::vector<int32_t> ids;
      for (const auto& id : j) {
        if (!id.is_number_integer()) return Fail(decode_jsonl + ": line " + std::to_string(n) + " holds a non-integer");
        ids.push_back(id.get<int32_t>());
      }
      auto decoded = tok.Decode(ids, skip_special);
      if (!decoded.ok()) return Fail(std::string(decoded.status().message()));
      o << nlohmann::json({{"text", *decoded}, {"stream", Stream(tok, ids, skip_special)}})
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
        << "\n";
    }
    return 0;
  }
  if (jsonl.empty() || out.empty()) return Fail("give --text, --decode, --jsonl or --decode-jsonl with --out");

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
