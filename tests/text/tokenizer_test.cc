// The tokenizer's parts on small cases worked out by hand (the corpus check against the
// tokenizers/tiktoken libraries is tests/text/tokenizer_parity.py), UTF-8 handling against
// Python's `bytes.decode(errors="replace")`, and the errors for broken tokenizer files.
#include <fstream>
#include <sstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer_files.h"
#include "text/utf8.h"

namespace moe::text {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

void Write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(Utf8Test, LossyMatchesPythonDecodeReplace) {
  const std::string R = "\xEF\xBF\xBD";
  // Expected values from Python: bytes.decode("utf-8", "replace").
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"abc", "abc"},
      {"\xe4\xb8", R},
      {"\xe4\xb8\xad", "\xe4\xb8\xad"},
      {"\xff", R},
      {"\xc0\xaf", R + R},
      {"\xe0\x80\x80", R + R + R},
      {"\xed\xa0\x80", R + R + R},
      {"\xf4\x90\x80\x80", R + R + R + R},
      {"\xf0\x9f\x98", R},
      {"\xf0\x9f\x98\x80x", "\xf0\x9f\x98\x80x"},
      {"a\x80" "b", "a" + R + "b"},
      {"\xe4\xb8" "a", R + "a"},
      {"\xf1\x80\x80", R},
      {"\xc3", R},
  };
  for (const auto& [in, want] : cases) EXPECT_EQ(LossyUtf8(in), want) << absl::CHexEscape(in);
}

TEST(Utf8Test, SettledPrefixHoldsBackOnlyAnUnfinishedCharacter) {
  EXPECT_EQ(SettledUtf8Prefix("ab\xe4\xb8"), 2u);
  EXPECT_EQ(SettledUtf8Prefix("ab\xe4\xb8\xad"), 5u);
  EXPECT_EQ(SettledUtf8Prefix("ab\xe4" "a"), 4u);  // cannot be finished any more: settled
  EXPECT_EQ(SettledUtf8Prefix("\xf0\x9f\x98"), 0u);
  EXPECT_EQ(SettledUtf8Prefix("\xff"), 1u);
}

// Any byte stream cut anywhere streams to the same text as converting it whole.
TEST(Utf8Test, StreamingAnyCutEqualsWholeConversion) {
  std::mt19937 rng(7);
  const std::string alphabet[] = {"a", " ", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xc3\xa9",
                                  "\x80", "\xff", "\xe4", "\xf0\x9f", "\xed\xa0\x80"};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string all;
    for (int i = 0; i < 12; ++i) all += alphabet[rng() % 10];
    std::string pending, streamed;
    for (size_t i = 0; i < all.size();) {
      const size_t n = 1 + rng() % 3;
      pending += all.substr(i, n);
      i += n;
      const size_t settled = SettledUtf8Prefix(pending);
      streamed += LossyUtf8(pending.substr(0, settled));
      pending.erase(0, settled);
    }
    streamed += LossyUtf8(pending);
    ASSERT_EQ(streamed, LossyUtf8(all)) << absl::CHexEscape(all);
  }
}

std::vector<std::string> Pieces(const PreTokenizer& p, std::string_view text) {
  std::vector<std::string_view> views;
  p.Split(text, &views);
  return std::vector<std::string>(views.begin(), views.end());
}

TEST(PreTokenizerTest, SplitBehaviorsAsHfDefinesThem) {
  auto split = [](const char* behavior) {
    return PreTokenizer::FromJson({{"type", "Split"}, {"pattern", {{"String", "-"}}},
                                   {"behavior", behavior}, {"invert", false}})
        .value();
  };
  // The examples of HF tokenizers' SplitDelimiterBehavior documentation.
  const char* text = "the-final--countdown";
  EXPECT_THAT(Pieces(split("Isolated"), text),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(Pieces(split("Removed"), text), ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(Pieces(split("MergedWithPrevious"), text),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(Pieces(split("MergedWithNext"), text),
              ElementsAre("the", "-final", "-", "-countdown"));
  EXPECT_FALSE(PreTokenizer::FromJson({{"type", "Split"}, {"pattern", {{"String", "-"}}},
                                       {"behavior", "Contiguous"}})
                   .ok());
  EXPECT_THAT(std::string(PreTokenizer::FromJson({{"type", "WhitespaceSplit"}}).status().message()),
              HasSubstr("WhitespaceSplit"));
  // Metaspace: spaces become "▁", one goes first (prepend_scheme "first": at the input's start
  // only), and with split each piece starts at a "▁".
  auto meta = PreTokenizer::FromJson({{"type", "Metaspace"}, {"replacement", "▁"},
                                      {"prepend_scheme", "first"}, {"split", true}});
  ASSERT_TRUE(meta.ok()) << meta.status();
  std::string rewritten;
  ASSERT_TRUE(meta->Metaspace("a b  c", /*at_start=*/true, &rewritten));
  EXPECT_EQ(rewritten, "▁a▁b▁▁c");
  EXPECT_THAT(Pieces(*meta, rewritten), ElementsAre("▁a", "▁b", "▁", "▁c"));
  ASSERT_TRUE(meta->Metaspace("a b", /*at_start=*/false, &rewritten));
  EXPECT_EQ(rewritten, "a▁b");
  EXPECT_FALSE(PreTokenizer::FromJson({{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}}, {{"type", "Metaspace"}}}}}).ok());
}

TEST(PreTokenizerTest, KimiPatternGivesHanRunsTheirOwnPieces) {
  auto kimi = PreTokenizer::FromPattern(kKimiPattern).value();
  EXPECT_THAT(Pieces(kimi, "中文English混合"), ElementsAre("中文", "English", "混合"));
  EXPECT_THAT(Pieces(kimi, "北京市 Pascal"), ElementsAre("北京市", " Pascal"));
  // CJK punctuation is not Han (by Script; its Script_Extensions include Han).
  EXPECT_THAT(Pieces(kimi, "蔶。[E"), ElementsAre("蔶", "。[", "E"));
  EXPECT_THAT(Pieces(kimi, "I'M 12345"), ElementsAre("I'M", " ", "123", "45"));
}

// A byte-level BPE small enough to work out by hand.
constexpr char kTinyTokenizer[] = R"({
  "added_tokens": [
    {"id": 100, "content": "<s>", "special": true},
    {"id": 101, "content": "<tool>", "special": false, "lstrip": true, "rstrip": true},
    {"id": 102, "content": "cab", "special": false, "single_word": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [100], "tokens": ["<s>"]}}},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "abc": 5, "Ġa": 6},
            "merges": ["a b", "ab c", "Ġ a"]}})";

class TinyTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Write(dir_.file("tokenizer.json"), kTinyTokenizer);
    tok_ = LoadTokenizer(dir_.path()).value();
  }
  moe::testing::ScratchDir dir_;
  std::shared_ptr<const Tokenizer> tok_;
};

TEST_F(TinyTokenizerTest, MergesLowestRankFirst) {
  // a b c a b → (a b) twice, rank 0 → ab c ab → (ab c), rank 1 → abc ab.
  EXPECT_THAT(tok_->Encode("abcab", false), ElementsAre(5, 4));
  // Ġ a b: (a b) has rank 0, before (Ġ a) with rank 2, and nothing merges Ġ with ab.
  EXPECT_THAT(tok_->Encode("x ab", false), ElementsAre(3, 4));  // "x" has no token: dropped
  EXPECT_THAT(tok_->Encode("ab", true), ElementsAre(100, 4));   // the template's BOS
}

TEST_F(TinyTokenizerTest, AddedTokensStripAndSingleWord) {
  EXPECT_THAT(tok_->Encode("ab  <tool>  c", false), ElementsAre(4, 101, 2));
  EXPECT_THAT(tok_->Encode("ab<s>c", false), ElementsAre(4, 100, 2));
  // "cab" alone is the added token; inside "abcab" it touches word characters and is not.
  EXPECT_THAT(tok_->Encode("cab abcab", false), ElementsAre(102, 3, 5, 4));
}

TEST_F(TinyTokenizerTest, DecodesAndStreamsWithAndWithoutSpecialTokens) {
  const std::vector<int32_t> ids = {100, 5, 3, 4, 101};
  EXPECT_EQ(tok_->Decode(ids).value(), "<s>abc ab<tool>");
  EXPECT_EQ(tok_->Decode(ids, /*skip_special_tokens=*/true).value(), "abc ab<tool>");
  StreamDecoder stream(*tok_, true);
  std::string text;
  for (int32_t id : ids) text += stream.Push(id).value();
  EXPECT_EQ(text + stream.Finish(), "abc ab<tool>");
  EXPECT_EQ(tok_->Decode({7, 5, 1000}).value(), "abc");  // ids with no token stand for nothing
  EXPECT_THAT(std::string(tok_->Decode({-1}).status().message()), HasSubstr("token id -1"));
  EXPECT_EQ(tok_->TokenId("<tool>"), 101);
  EXPECT_EQ(tok_->TokenId("abc"), 5);
  EXPECT_TRUE(tok_->IsSpecial(100));
  EXPECT_FALSE(tok_->IsSpecial(101));
}

TEST_F(TinyTokenizerTest, ConfigFlagsDecideBosAndEos) {
  Write(dir_.file("tokenizer_config.json"),
        R"({"add_bos_token": false, "add_eos_token": true, "bos_token": "<s>",
            "eos_token": {"content": "<tool>"}})");
  auto tok = LoadTokenizer(dir_.path()).value();
  EXPECT_THAT(tok->Encode("ab", true), ElementsAre(4, 101));
  EXPECT_EQ(tok->bos_id(), 100);
  EXPECT_EQ(tok->eos_id(), 101);
}

TEST(TokenizerFilesTest, ErrorsNameTheFileAndWhatIsWrong) {
  moe::testing::ScratchDir dir;
  auto error = [&] { return std::string(LoadTokenizer(dir.path()).status().message()); };
  EXPECT_THAT(error(), HasSubstr("expected tokenizer.json or tiktoken.model"));
  EXPECT_EQ(LoadTokenizer(dir.path()).status().code(), absl::StatusCode::kNotFound);

  Write(dir.file("tokenizer.json"), "{not json");
  EXPECT_THAT(error(), HasSubstr("tokenizer.json: not JSON"));

  std::string bad_merge = kTinyTokenizer;
  bad_merge.replace(bad_merge.find("\"Ġ a\""), 6, "\"Ġ z\"");
  Write(dir.file("tokenizer.json"), bad_merge);
  EXPECT_THAT(error(), HasSubstr("tokenizer.json: model: merge 2"));
  EXPECT_THAT(error(), HasSubstr("right part"));

  std::string sentencepiece = kTinyTokenizer;
  sentencepiece.replace(sentencepiece.find("\"ByteLevel\", \"add_prefix_space\""), 11, "\"Metaspace\"");
  Write(dir.file("tokenizer.json"), sentencepiece);
  EXPECT_THAT(error(), HasSubstr("Metaspace"));

  std::string no_added = kTinyTokenizer;  // the template's BOS (id 100) is then no token
  no_added.replace(no_added.find("added_tokens"), 12, "renamed_away");
  Write(dir.file("tokenizer.json"), no_added);
  EXPECT_THAT(error(), HasSubstr("post_processor: token id 100"));

  // Ids must be integers in [0, 2^24): floats and huge numbers are errors naming where they are.
  struct BadId {
    std::string from, to, message;
  };
  for (const BadId& c :
       {BadId{"\"ab\": 4", "\"ab\": 2.39e25", "model.vocab: id 2.39e+25 is not an integer"},
        BadId{"\"ab\": 4", "\"ab\": 99999999999", "model.vocab: id 99999999999 out of range"},
        BadId{"{\"id\": 100,", "{\"id\": 1e300,", "added_tokens: id 1e+300 is not an integer"},
        BadId{"\"ids\": [100]", "\"ids\": [-5]",
              "post_processor.special_tokens: id -5 out of range"}}) {
    std::string bad = kTinyTokenizer;
    ASSERT_NE(bad.find(c.from), std::string::npos) << c.from;
    bad.replace(bad.find(c.from), c.from.size(), c.to);
    Write(dir.file("tokenizer.json"), bad);
    EXPECT_THAT(error(), HasSubstr(c.message));
  }

  Write(dir.file("tokenizer.json"), kTinyTokenizer);
  Write(dir.file("tokenizer_config.json"), R"({"bos_token": "<nope>"})");
  EXPECT_THAT(error(), HasSubstr("tokenizer_config.json: bos_token \"<nope>\" is not a token"));

  moe::testing::ScratchDir kimi;
  Write(kimi.file("tiktoken.model"), "YQ== 0\nYg== 1\nnot-a-line\n");
  EXPECT_THAT(std::string(LoadTokenizer(kimi.path()).status().message()),
              HasSubstr("tiktoken.model: line 3"));
  Write(kimi.file("tiktoken.model"), "YQ== 0\nYg== 0\n");
  EXPECT_THAT(std::string(LoadTokenizer(kimi.path()).status().message()),
              HasSubstr("rank 0 given twice"));
}

// A SentencePiece-style tokenizer.json in Llama 2's layout (tests/fuzz/corpus-tokenizer's seed
// after its selector byte): spaces as "▁", one prepended, byte fallback, Strip of one leading
// space. Ids worked out by hand (and as HF tokenizers gives them).
TEST(TokenizerFilesTest, SentencePieceStyleWithByteFallback) {
  moe::testing::ScratchDir dir;
  std::ifstream seed(std::string(MOE_SOURCE_DIR) + "/tests/fuzz/corpus-tokenizer/json-sentencepiece",
                     std::ios::binary);
  std::stringstream text;
  text << seed.rdbuf();
  Write(dir.file("tokenizer.json"), text.str().substr(1));
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  // <s> ▁ hello ▁the ▁ <0xE4><0xB8><0xAD> a: "中" is no token, so its three bytes stand in.
  const std::vector<int32_t> ids = {1, 259, 273, 270, 259, 231, 187, 176, 260};
  EXPECT_EQ((*tok)->Encode("hello the 中a"), ids);
  EXPECT_EQ((*tok)->Decode(ids, /*skip_special_tokens=*/true).value(), "hello the 中a");
  EXPECT_EQ((*tok)->Decode(ids).value(), "<s> hello the 中a");
  // A byte run that is not UTF-8 is one U+FFFD per byte (HF's ByteFallback), and a stream
  // holds a run back until it ends.
  EXPECT_EQ((*tok)->Decode({231, 187, 260}).value(), "\uFFFD\uFFFDa");
  StreamDecoder stream(**tok, false);
  EXPECT_EQ(stream.Push(231).value(), "");
  EXPECT_EQ(stream.Push(187).value(), "");
  EXPECT_EQ(stream.Push(176).value(), "");
  EXPECT_EQ(stream.Push(270).value(), "中 the");  // the leading-space Strip has nothing to take
  EXPECT_EQ(stream.Finish(), "");
  // Strip takes the one leading space the prepended "▁" decodes to.
  EXPECT_EQ((*tok)->Decode({259, 273}).value(), "hello");
}

TEST(TokenizerFilesTest, TiktokenRanksMergeByTheMergedTokensRank) {
  moe::testing::ScratchDir dir;
  // a=0 b=1 c=2 bc=3 ab=4: in "abc", (b c) has rank 3 and wins over (a b) with rank 4.
  Write(dir.file("tiktoken.model"), "YQ== 0\nYg== 1\nYw== 2\nYmM= 3\nYWI= 4\n");
  Write(dir.file("tokenizer_config.json"),
        R"({"added_tokens_decoder": {"5": {"content": "[BOS]", "special": true}},
            "bos_token": "[BOS]"})");
  auto tok = LoadTokenizer(dir.path()).value();
  EXPECT_THAT(tok->Encode("abc", false), ElementsAre(0, 3));
  EXPECT_THAT(tok->Encode("[BOS]ab", false), ElementsAre(5, 4));
  EXPECT_EQ(tok->bos_id(), 5);
  EXPECT_EQ(tok->Decode({6}).value(), "<|reserved_token_6|>");  // Kimi reserves 256 ids
  EXPECT_EQ(tok->size(), 5 + 256);
}

}  // namespace
}  // namespace moe::text
