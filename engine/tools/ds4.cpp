// ds4: the command-line front end of the engine.
//
//   ds4 -m MODEL.gguf -p "TEXT" [--nothink] [-n N] [--temp T] [--seed S] [--ctx N]
//       [--backend cpu|cuda] [--mtp MTP.gguf --mtp-draft N] [--system TEXT]
//   ds4 -m MODEL.gguf                      interactive multi-turn chat
//   ds4 -m MODEL.gguf --golden DIR         compare with a golden fixture folder
//
// One-shot output: the answer on stdout; in thinking mode the reasoning goes to
// stderr; prefill and decode speeds go to stderr. The prompt is rendered the way
// ds4's CLI does (spec/TOKENIZER_AND_CHAT.md §5.4): BOS, system text, User, the text,
// Assistant, <think> or </think>, special tokens pushed by id and each text encoded
// on its own; a prompt starting with the BOS string is taken as already rendered.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "model/model.h"
#include "runtime/engine.h"
#include "runtime/golden.h"
#include "text/tokenizer.h"

namespace {

std::atomic<bool> g_cancel{false};
std::atomic<bool> g_generating{false};
std::atomic<bool> g_quit{false};

// Ctrl-C while generating stops that generation; at the prompt it ends the program.
void on_sigint(int) {
  if (g_generating.load()) {
    g_cancel.store(true);
  } else {
    g_quit.store(true);
  }
}

void install_sigint_handler() {
  struct sigaction action {};
  action.sa_handler = on_sigint;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: a blocked read at the prompt returns
  sigaction(SIGINT, &action, nullptr);
}

struct CliOptions {
  std::string model;
  std::string prompt;
  bool has_prompt = false;
  bool nothink = false;
  int32_t max_tokens = 50000;
  bool max_tokens_given = false;
  float temperature = 1.0f;
  float top_p = 1.0f;
  float min_p = 0.05f;
  int32_t top_k = 0;
  std::optional<uint64_t> seed;
  int32_t ctx = 32768;
  std::string backend;
  int threads = 0;
  std::string mtp;
  int32_t mtp_draft = 0;
  std::string system = "You are a helpful assistant";
  std::string golden;
  std::string golden_rule;  // "strict", "fast" or empty (the backend's default)
  bool no_qat = false;
  int32_t prefill_chunk = 2048;
};

// Splits the generated text at the first "</think>": reasoning before it goes to
// stderr, the answer after it to stdout. A marker split across pieces is held back.
class ThinkSplitter {
 public:
  explicit ThinkSplitter(bool thinking) : in_reasoning_(thinking) {}

  void write(std::string_view text) {
    if (!in_reasoning_) {
      emit(stdout, text);
      return;
    }
    held_ += text;
    const std::string_view marker = ds4::kThinkEndText;
    const size_t at = held_.find(marker);
    if (at != std::string::npos) {
      emit(stderr, std::string_view(held_).substr(0, at));
      emit(stderr, "\n");
      in_reasoning_ = false;
      const std::string rest = held_.substr(at + marker.size());
      held_.clear();
      emit(stdout, rest);
      return;
    }
    // Keep the longest tail that could start the marker.
    size_t keep = std::min(held_.size(), marker.size() - 1);
    while (keep > 0 && std::string_view(held_).substr(held_.size() - keep) != marker.substr(0, keep)) {
      --keep;
    }
    emit(stderr, std::string_view(held_).substr(0, held_.size() - keep));
    held_.erase(0, held_.size() - keep);
  }

  void finish() {
    if (!held_.empty()) emit(in_reasoning_ ? stderr : stdout, held_);
    held_.clear();
  }

 private:
  static void emit(FILE* f, std::string_view text) {
    if (text.empty()) return;
    std::fwrite(text.data(), 1, text.size(), f);
    std::fflush(f);
  }
  bool in_reasoning_;
  std::string held_;
};

// The tokens of one user turn (§5.4): [BOS system] User text Assistant <think>|</think>.
std::vector<int32_t> user_turn_tokens(const ds4::Tokenizer& tok, const std::string& text,
                                      const std::string* system, bool thinking) {
  std::vector<int32_t> ids;
  auto append = [&](const std::vector<int32_t>& more) { ids.insert(ids.end(), more.begin(), more.end()); };
  if (system != nullptr) {
    ids.push_back(tok.bos());
    append(tok.encode(*system));
  }
  ids.push_back(tok.user());
  append(tok.encode(text));
  ids.push_back(tok.assistant());
  ids.push_back(thinking ? tok.think_begin() : tok.think_end());
  return ids;
}

void print_stats(const ds4::GenerateResult& r) {
  std::fprintf(stderr,
               "\nprefill: %d tokens (%d reused) in %.3f s, %.2f t/s | decode: %zu tokens in "
               "%.3f s, %.2f t/s | finish: %s\n",
               r.prompt_tokens - r.reused_tokens, r.reused_tokens, r.prefill_seconds,
               r.prefill_tokens_per_second(), r.output_ids.size(), r.decode_seconds,
               r.decode_tokens_per_second(), std::string(ds4::finish_reason_name(r.finish_reason)).c_str());
  if (r.draft_tokens > 0) {
    std::fprintf(stderr, "mtp: %d of %d drafts accepted (%.1f%%)\n", r.accepted_draft_tokens,
                 r.draft_tokens, 100.0 * r.accepted_draft_tokens / r.draft_tokens);
  }
}

ds4::GenerateRequest make_request(const CliOptions& o, std::vector<int32_t> prompt,
                                  int32_t ctx) {
  ds4::GenerateRequest req;
  req.prompt = std::move(prompt);
  req.sampling.temperature = o.temperature;
  req.sampling.top_p = o.top_p;
  req.sampling.min_p = o.min_p;
  req.sampling.top_k = o.top_k;
  req.sampling.seed = o.seed ? *o.seed : ds4::sampler_time_seed();
  const int32_t room = ctx - static_cast<int32_t>(req.prompt.size());
  // An explicit -n beyond the free context is reported by the engine with the
  // numbers; the default budget shrinks to what fits.
  req.max_tokens = o.max_tokens_given ? o.max_tokens : std::max(0, std::min(o.max_tokens, room));
  req.cancel = &g_cancel;
  return req;
}

// Runs one generation, printing as it goes. Returns the result or the error.
ds4::Result<ds4::GenerateResult> run_turn(ds4::Engine& engine, ds4::Session& session,
                                          const ds4::GenerateRequest& req, bool thinking) {
  ThinkSplitter out(thinking);
  g_cancel.store(false);
  g_generating.store(true);
  auto result = engine.generate(session, req, [&](const ds4::TokenDelta& d) {
    out.write(d.text);
    return true;
  });
  g_generating.store(false);
  out.finish();
  return result;
}

int run_golden_mode(const CliOptions& o, ds4::BackendKind kind) {
  ds4::GoldenOptions golden;
  golden.fixture_dir = o.golden;
  golden.model_path = o.model;
  golden.backend = kind;
  golden.threads = o.threads;
  golden.rel_tolerance = o.golden_rule == "strict" ? ds4::GoldenOptions::kStrictTolerance
                         : o.golden_rule == "fast" ? ds4::GoldenOptions::kFastPathTolerance
                                                   : ds4::default_golden_tolerance(kind);
  if (o.no_qat) golden.variants = {"off"};
  auto report = ds4::run_golden(golden);
  if (!report.ok()) {
    std::fprintf(stderr, "ds4: golden check failed to run: %s\n", report.status().message().c_str());
    std::printf("golden %s: error: %s FAIL\n", o.golden.c_str(), report.status().message().c_str());
    return 1;
  }
  for (const std::string& line : report->details) std::fprintf(stderr, "%s\n", line.c_str());
  std::printf("%s\n", report->summary().c_str());
  return report->passed() ? 0 : 1;
}

int run_one_shot(const CliOptions& o, ds4::Engine& engine) {
  const ds4::Tokenizer& tok = engine.tokenizer();
  const bool thinking = !o.nothink;
  std::vector<int32_t> prompt =
      o.prompt.starts_with(ds4::kBosText)
          ? tok.encode_with_specials(o.prompt)
          : user_turn_tokens(tok, o.prompt, &o.system, thinking);
  auto session = engine.new_session();
  if (!session.ok()) {
    std::fprintf(stderr, "ds4: %s\n", session.status().message().c_str());
    return 1;
  }
  auto result = run_turn(engine, **session, make_request(o, std::move(prompt), engine.ctx_size()),
                         thinking);
  if (!result.ok()) {
    std::fprintf(stderr, "\nds4: %s\n", result.status().message().c_str());
    return 1;
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);
  print_stats(*result);
  return 0;
}

int run_interactive(const CliOptions& o, ds4::Engine& engine) {
  const ds4::Tokenizer& tok = engine.tokenizer();
  const bool thinking = !o.nothink;
  auto session = engine.new_session();
  if (!session.ok()) {
    std::fprintf(stderr, "ds4: %s\n", session.status().message().c_str());
    return 1;
  }
  std::vector<int32_t> history;  // the transcript: every turn's tokens, replies verbatim
  std::fprintf(stderr, "ds4 chat: Ctrl-C stops a reply, Ctrl-C at the prompt or Ctrl-D exits.\n");
  while (true) {
    std::fprintf(stderr, "> ");
    std::fflush(stderr);
    std::string line;
    if (!std::getline(std::cin, line) || g_quit.load()) break;
    if (line.empty()) continue;
    std::vector<int32_t> turn = user_turn_tokens(tok, line, history.empty() ? &o.system : nullptr, thinking);
    std::vector<int32_t> prompt = history;
    prompt.insert(prompt.end(), turn.begin(), turn.end());
    auto result = run_turn(engine, **session, make_request(o, prompt, engine.ctx_size()), thinking);
    if (!result.ok()) {
      std::fprintf(stderr, "\nds4: %s\nStarting a new conversation.\n", result.status().message().c_str());
      history.clear();
      continue;
    }
    std::fputc('\n', stdout);
    std::fflush(stdout);
    print_stats(*result);
    history = std::move(prompt);
    history.insert(history.end(), result->output_ids.begin(), result->output_ids.end());
    if (history.back() != tok.eos()) history.push_back(tok.eos());
  }
  std::fputc('\n', stderr);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds4: DeepSeek V4 Flash on the command line"};
  CliOptions o;
  app.add_option("-m,--model", o.model, "model GGUF file")->required();
  app.add_option("-p,--prompt", o.prompt, "prompt (one-shot); without it: interactive chat");
  app.add_flag("--nothink", o.nothink, "answer directly, without a reasoning block");
  app.add_option("-n,--tokens", o.max_tokens, "most tokens to generate")->check(CLI::NonNegativeNumber);
  app.add_option("--temp", o.temperature, "temperature (<= 0: greedy)");
  app.add_option("--top-p", o.top_p, "nucleus sampling mass (1 = off)");
  app.add_option("--top-k", o.top_k, "keep the k most probable tokens (0 = off)")->check(CLI::NonNegativeNumber);
  app.add_option("--min-p", o.min_p, "drop tokens below min_p x the top probability");
  app.add_option("--seed", o.seed, "sampling seed (default: from the clock)");
  app.add_option("--ctx", o.ctx, "context size in tokens")->check(CLI::PositiveNumber);
  app.add_option("--backend", o.backend, "cpu or cuda (default: cuda when present)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--threads", o.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--mtp", o.mtp, "MTP draft GGUF file");
  app.add_option("--mtp-draft", o.mtp_draft, "MTP draft tokens per step (default 2 with --mtp)")->check(CLI::NonNegativeNumber);
  app.add_option("--system,-s", o.system, "system prompt (\"\" for none)");
  app.add_option("--golden", o.golden, "check the engine against a golden fixture folder");
  app.add_option("--golden-rule", o.golden_rule,
                 "logit bound for --golden: strict (1e-3*std, the CPU default) or fast "
                 "(2e-2*std, the CUDA default; fixtures/README.md section 4)")
      ->check(CLI::IsMember({"strict", "fast"}));
  app.add_flag("--no-qat", o.no_qat, "do not simulate the FP8 KV / FP4 indexer round trips");
  app.add_option("--prefill-chunk", o.prefill_chunk, "prompt tokens per forward pass")
      ->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  o.has_prompt = app.count("--prompt") > 0;
  o.max_tokens_given = app.count("--tokens") > 0;
  if (!o.mtp.empty() && app.count("--mtp-draft") == 0) o.mtp_draft = ds4::kDefaultMtpDraft;

  ds4::BackendKind kind = ds4::default_backend_kind();
  if (o.backend == "cpu") kind = ds4::BackendKind::kCpu;
  if (o.backend == "cuda") kind = ds4::BackendKind::kCuda;

  if (!o.golden.empty()) return run_golden_mode(o, kind);

  ds4::EngineOptions options;
  options.model_path = o.model;
  options.mtp_path = o.mtp;
  options.mtp_draft = o.mtp_draft;
  options.backend = kind;
  options.ctx = o.ctx;
  options.threads = o.threads;
  options.qat = !o.no_qat;
  options.prefill_chunk = o.prefill_chunk;
  auto engine = ds4::Engine::Load(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "ds4: %s\n", engine.status().message().c_str());
    return 1;
  }
  if (o.mtp_draft > 0 && !(*engine)->speculative_enabled()) {
    std::fprintf(stderr, "ds4: note: the %s backend cannot run the MTP block; decoding without drafts\n",
                 std::string((*engine)->backend().name()).c_str());
  } else if (o.mtp_draft > 0 && o.temperature > 0) {
    std::fprintf(stderr, "ds4: note: MTP speculative decoding is used for greedy decoding only (--temp 0)\n");
  }
  install_sigint_handler();
  return o.has_prompt ? run_one_shot(o, **engine) : run_interactive(o, **engine);
}
