// Tokenizer throughput (Google Benchmark): encoding 1 MB of mixed text (prose in several scripts, code, JSON,
// emoji, whitespace runs) with the built-in encoder and with the SentencePiece library, decoding and
// streaming decoding of the resulting ids. Reports bytes/s of text.
//
//   mixtral_bench_tokenizer [--benchmark_... flags] TOKENIZER   (tokenizer.model, tokenizer.json, .gguf, dir)
#include <benchmark/benchmark.h>

#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mixtral/tokenizer.h"

namespace {

// ~1 MB of deterministic mixed text.
std::string mixed_text(size_t bytes) {
  static const char* kFrags[] = {
      "The quick brown fox jumps over the lazy dog. ",
      "Mixtral routes each token to two of its eight experts; the router stays in fp32. ",
      "Le cœur a ses raisons que la raison ne connaît point. ",
      "Über den Wolken muss die Freiheit wohl grenzenlos sein. ",
      "Всё смешалось в доме Облонских. ",
      "日本語のテキストも少し含めます。",
      "中文文本测试，包括标点符号。",
      "مرحبا بالعالم، هذه جملة عربية. ",
      "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
      "for (int i = 0; i < n; ++i) {\n\tsum += x[i] * y[i];\n}\n",
      "{\"id\": 12345, \"name\": \"tokenizer\", \"tags\": [\"a\", \"b\"], \"ok\": true}\n",
      "👩\u200d👩\u200d👧 🎉🦙 ",
      "    indented   with   runs   of   spaces\r\n",
      "1234567890 3.14159 2.71828 ",
      "\n\n",
  };
  std::mt19937 rng(42);
  std::uniform_int_distribution<size_t> pick(0, std::size(kFrags) - 1);
  std::string s;
  while (s.size() < bytes) s += kFrags[pick(rng)];
  return s;
}

const std::string& text() {
  static const std::string t = mixed_text(1 << 20);
  return t;
}

void BM_Encode(benchmark::State& state, const mixtral::Tokenizer* tok) {
  size_t n_ids = 0;
  for (auto _ : state) {
    auto ids = tok->encode(text(), true);
    if (!ids.ok()) {
      state.SkipWithError(ids.error().message.c_str());
      return;
    }
    n_ids = ids->size();
    benchmark::DoNotOptimize(ids->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text().size()));
  state.counters["ids"] = static_cast<double>(n_ids);
}

void BM_Decode(benchmark::State& state, const mixtral::Tokenizer* tok) {
  const auto ids = *tok->encode(text(), true);
  for (auto _ : state) {
    auto s = tok->decode(ids);
    benchmark::DoNotOptimize(s->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text().size()));
}

void BM_StreamingDecode(benchmark::State& state, const mixtral::Tokenizer* tok) {
  const auto ids = *tok->encode(text(), true);
  for (auto _ : state) {
    mixtral::StreamingDecoder d(*tok);
    size_t n = 0;
    for (int32_t id : ids) n += d.push(id)->size();
    n += d.finish().size();
    benchmark::DoNotOptimize(n);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text().size()));
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (argc != 2) {
    std::fprintf(
        stderr, "usage: %s [--benchmark_... flags] TOKENIZER (tokenizer.model, tokenizer.json, .gguf, dir)\n",
        argv[0]);
    return 2;
  }
  auto builtin = mixtral::Tokenizer::load(argv[1]);
  auto library = mixtral::Tokenizer::load(argv[1], {mixtral::TokenizerBackend::kSentencePiece});
  if (!builtin.ok() || !library.ok()) {
    std::fprintf(stderr, "mixtral: error: %s\n", (builtin.ok() ? library : builtin).error().message.c_str());
    return 1;
  }
  benchmark::RegisterBenchmark("Encode1MB/builtin", BM_Encode, builtin->get())->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("Encode1MB/sentencepiece_library", BM_Encode, library->get())
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("Decode1MB", BM_Decode, builtin->get())->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("StreamingDecode1MB", BM_StreamingDecode, builtin->get())
      ->Unit(benchmark::kMillisecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
