// ds4-bench: in-process prefill / decode benchmark with llama-benchy's metrics
// (runtime/bench.h), one row per context depth, as a table on stdout and
// optionally as CSV.
//
//   ds4-bench -m MODEL.gguf [--backend cpu|cuda] [--pp 512] [--tg 32]
//             [--depth 0,1024] [--runs 1] [--csv FILE] [--threads N]
//   ds4-bench --synthetic full [...]     full-size random weights (CUDA backend)
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "model/model.h"
#include "runtime/bench.h"
#include "runtime/engine.h"

namespace {

struct BenchCli {
  std::string model;
  std::string synthetic;
  std::string backend;
  std::string csv_path;
  int threads = 0;
  bool no_qat = false;
  bool no_warmup = false;
  ds4::BenchParams params;
};

std::string file_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Loads the model file and creates its backend (the target owns both).
ds4::Result<ds4::BenchTarget> load_file_target(const BenchCli& cli, ds4::BackendKind kind,
                                               const ds4::BackendOptions& options) {
  auto model = ds4::Model::Load(cli.model);
  if (!model.ok()) return model.status();
  auto backend = ds4::make_backend(**model, kind, options);
  if (!backend.ok()) return backend.status();
  struct Owner {
    std::unique_ptr<ds4::Model> model;
    std::unique_ptr<ds4::Backend> backend;
  };
  auto owner = std::make_shared<Owner>();
  owner->model = std::move(*model);
  owner->backend = std::move(*backend);
  ds4::BenchTarget target;
  target.model_name = file_name(cli.model);
  target.backend_name = std::string(owner->backend->name());
  target.vocab = owner->model->config().vocab;
  target.backend = owner->backend.get();
  target.owner = owner;
  return target;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds4-bench: prefill and decode speed (llama-benchy metrics)"};
  BenchCli cli;
  app.add_option("-m,--model", cli.model, "model GGUF file");
  app.add_option("--synthetic", cli.synthetic, "'full': random weights of the real model's shapes (CUDA)")
      ->check(CLI::IsMember({"full"}));
  app.add_option("--backend", cli.backend, "cpu or cuda (default: cuda when present)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--pp", cli.params.pp, "prompt tokens per measurement")->check(CLI::PositiveNumber);
  app.add_option("--tg", cli.params.tg, "generated tokens per measurement")->check(CLI::PositiveNumber);
  app.add_option("--depth", cli.params.depths, "context depths (comma separated)")
      ->delimiter(',')
      ->check(CLI::NonNegativeNumber);
  app.add_option("--runs,-r", cli.params.repetitions, "measurements per depth")->check(CLI::PositiveNumber);
  app.add_option("--chunk", cli.params.chunk, "prefill tokens per forward pass")->check(CLI::PositiveNumber);
  app.add_option("--seed", cli.params.seed, "seed of the random token ids");
  app.add_option("--threads", cli.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--csv", cli.csv_path, "also write the rows as CSV to this file ('-' = stdout)");
  app.add_flag("--no-qat", cli.no_qat, "do not simulate the FP8 KV / FP4 indexer round trips");
  app.add_flag("--no-warmup", cli.no_warmup, "skip the untimed warmup run");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (cli.model.empty() == cli.synthetic.empty()) {
    std::fprintf(stderr, "ds4-bench: give either -m MODEL.gguf or --synthetic full\n");
    return 2;
  }
  cli.params.warmup = !cli.no_warmup;

  ds4::BackendKind kind = ds4::default_backend_kind();
  if (cli.backend == "cpu") kind = ds4::BackendKind::kCpu;
  if (cli.backend == "cuda") kind = ds4::BackendKind::kCuda;
  ds4::BackendOptions options;
  options.threads = cli.threads;
  options.qat = !cli.no_qat;
  options.max_batch = cli.params.chunk;

  ds4::Result<ds4::BenchTarget> target = ds4::Status::Error("no target");
  if (!cli.synthetic.empty()) {
    if (cli.backend == "cpu") {
      std::fprintf(stderr, "ds4-bench: --synthetic full needs the CUDA backend, not the CPU\n");
      return 1;
    }
    target = ds4::make_synthetic_full_target(options);
  } else {
    target = load_file_target(cli, kind, options);
  }
  if (!target.ok()) {
    std::fprintf(stderr, "ds4-bench: %s\n", target.status().message().c_str());
    return 1;
  }

  auto rows = ds4::run_bench(*target->backend, target->vocab, cli.params);
  if (!rows.ok()) {
    std::fprintf(stderr, "ds4-bench: %s\n", rows.status().message().c_str());
    return 1;
  }
  const int threads =
      cli.threads > 0 ? cli.threads : static_cast<int>(std::thread::hardware_concurrency());
  const std::string csv = ds4::bench_csv(*target, threads, *rows);
  if (cli.csv_path == "-") {
    std::fputs(csv.c_str(), stdout);
    return 0;
  }
  std::fputs(ds4::bench_table(*target, *rows).c_str(), stdout);
  if (!cli.csv_path.empty()) {
    std::ofstream out(cli.csv_path, std::ios::binary | std::ios::trunc);
    out << csv;
    out.close();
    if (!out) {
      std::fprintf(stderr, "ds4-bench: cannot write the CSV file %s\n", cli.csv_path.c_str());
      return 1;
    }
  }
  return 0;
}
