#include "runtime/bench.h"

#include <time.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <utility>

#include "runtime/generator.h"
#include "runtime/sampler.h"

#if defined(DS4_HAVE_CUDA) && __has_include("cuda/synthetic_full.h")
#include "cuda/synthetic_full.h"
#define DS4_HAVE_SYNTHETIC_FULL 1
#endif

namespace ds4 {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// CPU time of the whole process (all threads), in seconds.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

struct Measurement {
  double pp_tps = 0, tg_tps = 0, ttft_s = 0, depth_fill_s = 0;
  double pp_cpu_util = 0, tg_cpu_util = 0;
};

// Owns one backend sequence for the duration of a measurement.
class ScopedSequence {
 public:
  ScopedSequence(Backend& backend, SeqId seq) : backend_(backend), seq_(seq) {}
  ~ScopedSequence() { backend_.free_sequence(seq_); }
  ScopedSequence(const ScopedSequence&) = delete;
  ScopedSequence& operator=(const ScopedSequence&) = delete;
  SeqId id() const { return seq_; }

 private:
  Backend& backend_;
  SeqId seq_;
};

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int32_t vocab, int32_t n) {
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(rng);
  return ids;
}

Result<Measurement> measure_once(Backend& backend, int32_t vocab, int32_t pp, int32_t tg,
                                 int32_t depth, int32_t chunk, std::mt19937_64& rng) {
  auto seq_id = backend.new_sequence(depth + pp + tg);
  if (!seq_id.ok()) return seq_id.status();
  ScopedSequence seq(backend, *seq_id);
  Measurement m;

  const std::vector<int32_t> context = random_tokens(rng, vocab, depth);
  const auto fill_start = Clock::now();
  DS4_RETURN_IF_ERROR(prefill_tokens(backend, seq.id(), context, 0, chunk, nullptr)
                          .wrap("filling depth " + std::to_string(depth)));
  m.depth_fill_s = seconds_between(fill_start, Clock::now());

  const std::vector<int32_t> prompt = random_tokens(rng, vocab, pp);
  std::vector<float> logits;
  const double cpu0 = process_cpu_seconds();
  const auto t0 = Clock::now();
  DS4_RETURN_IF_ERROR(prefill_tokens(backend, seq.id(), prompt, depth, chunk, &logits)
                          .wrap("prefill of " + std::to_string(pp) + " tokens"));
  int32_t token = Sampler::greedy(logits);
  const auto t_first = Clock::now();
  const double cpu_first = process_cpu_seconds();
  m.ttft_s = seconds_between(t0, t_first);
  m.pp_tps = m.ttft_s > 0 ? pp / m.ttft_s : 0;
  m.pp_cpu_util = m.ttft_s > 0 ? (cpu_first - cpu0) / m.ttft_s : 0;

  int32_t pos = depth + pp;
  for (int32_t i = 1; i < tg; ++i) {
    DS4_RETURN_IF_ERROR(decode_token(backend, seq.id(), token, pos++, &logits));
    token = Sampler::greedy(logits);
  }
  const auto t_last = Clock::now();
  const double decode_s = seconds_between(t_first, t_last);
  m.tg_tps = tg > 1 && decode_s > 0 ? (tg - 1) / decode_s : 0;
  m.tg_cpu_util = decode_s > 0 ? (process_cpu_seconds() - cpu_first) / decode_s : 0;
  return m;
}

void mean_and_sd(const std::vector<double>& xs, double* mean, double* sd) {
  double sum = 0;
  for (double x : xs) sum += x;
  *mean = xs.empty() ? 0 : sum / xs.size();
  double var = 0;
  for (double x : xs) var += (x - *mean) * (x - *mean);
  *sd = xs.size() > 1 ? std::sqrt(var / (xs.size() - 1)) : 0;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

}  // namespace

Result<std::vector<BenchRow>> run_bench(Backend& backend, int32_t vocab, const BenchParams& p) {
  if (vocab <= 0) return Status::Error("bench: vocabulary size must be positive");
  if (p.pp <= 0) return Status::Error("bench: --pp must be at least 1, got " + std::to_string(p.pp));
  if (p.tg <= 0) return Status::Error("bench: --tg must be at least 1, got " + std::to_string(p.tg));
  if (p.repetitions <= 0) return Status::Error("bench: repetitions must be at least 1");
  if (p.chunk <= 0) return Status::Error("bench: chunk must be at least 1");
  for (int32_t d : p.depths) {
    if (d < 0) return Status::Error("bench: depth must be >= 0, got " + std::to_string(d));
  }
  std::mt19937_64 rng(p.seed);
  if (p.warmup) {
    auto warm = measure_once(backend, vocab, std::min(p.pp, 16), 2, 0, p.chunk, rng);
    if (!warm.ok()) return warm.status().wrap("bench warmup");
  }
  std::vector<BenchRow> rows;
  for (int32_t depth : p.depths) {
    std::vector<double> pp_tps, tg_tps, ttft, fill, pp_cpu, tg_cpu;
    for (int32_t r = 0; r < p.repetitions; ++r) {
      auto m = measure_once(backend, vocab, p.pp, p.tg, depth, p.chunk, rng);
      if (!m.ok()) return m.status().wrap("bench at depth " + std::to_string(depth));
      pp_tps.push_back(m->pp_tps);
      tg_tps.push_back(m->tg_tps);
      ttft.push_back(m->ttft_s * 1e3);
      fill.push_back(m->depth_fill_s);
      pp_cpu.push_back(m->pp_cpu_util);
      tg_cpu.push_back(m->tg_cpu_util);
    }
    BenchRow row;
    row.pp = p.pp;
    row.tg = p.tg;
    row.depth = depth;
    row.runs = p.repetitions;
    double unused_sd = 0;
    mean_and_sd(pp_tps, &row.pp_tps, &row.pp_tps_sd);
    mean_and_sd(tg_tps, &row.tg_tps, &row.tg_tps_sd);
    mean_and_sd(ttft, &row.ttft_ms, &unused_sd);
    mean_and_sd(fill, &row.depth_fill_s, &unused_sd);
    mean_and_sd(pp_cpu, &row.pp_cpu_util, &unused_sd);
    mean_and_sd(tg_cpu, &row.tg_cpu_util, &unused_sd);
    rows.push_back(row);
  }
  return rows;
}

Result<BenchTarget> make_synthetic_full_target(const BackendOptions& options) {
#ifdef DS4_HAVE_SYNTHETIC_FULL
  return make_cuda_synthetic_full_target(options);
#else
  return Status::Error(
      "--synthetic full needs the CUDA backend: it builds full-size weights on the GPU, and "
      "this build has no CUDA synthetic-weight support");
#endif
}

std::string bench_csv(const BenchTarget& target, int threads, const std::vector<BenchRow>& rows) {
  std::string out =
      "model,backend,threads,pp,tg,depth,runs,pp_tps,pp_tps_sd,tg_tps,tg_tps_sd,ttft_ms,"
      "depth_fill_s,pp_cpu_util,tg_cpu_util\n";
  for (const BenchRow& r : rows) {
    out += csv_field(target.model_name) + "," + csv_field(target.backend_name) + "," +
           std::to_string(threads) + "," + std::to_string(r.pp) + "," + std::to_string(r.tg) + "," +
           std::to_string(r.depth) + "," + std::to_string(r.runs) + "," +
           format("%.3f", r.pp_tps) + "," + format("%.3f", r.pp_tps_sd) + "," +
           format("%.3f", r.tg_tps) + "," + format("%.3f", r.tg_tps_sd) + "," +
           format("%.3f", r.ttft_ms) + "," + format("%.4f", r.depth_fill_s) + "," +
           format("%.2f", r.pp_cpu_util) + "," + format("%.2f", r.tg_cpu_util) + "\n";
  }
  return out;
}

std::string bench_table(const BenchTarget& target, const std::vector<BenchRow>& rows) {
  std::string out = "model: " + target.model_name + "   backend: " + target.backend_name + "\n";
  char line[256];
  std::snprintf(line, sizeof line, "| %-18s | %16s | %16s | %12s | %11s |\n", "test", "prefill t/s",
                "decode t/s", "ttft ms", "cores pp/tg");
  out += line;
  out += "|--------------------|------------------|------------------|--------------|-------------|\n";
  for (const BenchRow& r : rows) {
    const std::string test = "pp" + std::to_string(r.pp) + "+tg" + std::to_string(r.tg) + " @ d" +
                             std::to_string(r.depth);
    const std::string pp = format("%.2f", r.pp_tps) + " ± " + format("%.2f", r.pp_tps_sd);
    const std::string tg = format("%.2f", r.tg_tps) + " ± " + format("%.2f", r.tg_tps_sd);
    // "±" is two bytes in UTF-8 but one column wide: pad one extra.
    const std::string cores = format("%.2f", r.pp_cpu_util) + "/" + format("%.2f", r.tg_cpu_util);
    std::snprintf(line, sizeof line, "| %-18s | %17s | %17s | %12.2f | %11s |\n", test.c_str(),
                  pp.c_str(), tg.c_str(), r.ttft_ms, cores.c_str());
    out += line;
  }
  return out;
}

}  // namespace ds4
