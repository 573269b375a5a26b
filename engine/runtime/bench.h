// Benchmark: prefill and decode speed of a Backend measured in-process with
// llama-benchy's definitions, at several context depths.
//
// For each depth d and repetition: a fresh sequence is filled with d random tokens
// (not timed), then pp random prompt tokens are prefilled in chunks and the first
// token is sampled greedily from the last logits (prefill t/s = pp / that time; time
// to first token = the same interval), then tg - 1 further tokens are decoded one per
// step (decode t/s = (tg - 1) / (t_last - t_first), as llama-benchy computes it).
//
// run_bench() takes any Backend, so the same measurement runs on a model loaded
// from a file or on synthetic full-size weights (--synthetic full, built by the
// CUDA backend: see make_synthetic_full_target below).
//
// Thread-safety: run_bench drives the backend from the calling thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/backend.h"

namespace ds4 {

struct BenchParams {
  int32_t pp = 512;                    // prompt tokens per measurement
  int32_t tg = 32;                     // generated tokens per measurement (>= 1)
  std::vector<int32_t> depths = {0};   // tokens already in the context
  int32_t repetitions = 1;             // measurements per depth (averaged)
  int32_t chunk = 2048;                // prefill tokens per forward() call
  uint64_t seed = 1234;                // random token ids
  bool warmup = true;                  // one untimed short run before measuring
};

// One row per depth (means over the repetitions, with standard deviations).
struct BenchRow {
  int32_t pp = 0, tg = 0, depth = 0, runs = 0;
  double pp_tps = 0, pp_tps_sd = 0;   // prefill tokens per second
  double tg_tps = 0, tg_tps_sd = 0;   // decode tokens per second
  double ttft_ms = 0;                 // prefill of pp tokens + first sample
  double depth_fill_s = 0;            // time to fill the depth context (not part of pp)
  // Process CPU time / wall time during the prefill and the decode phase: about the
  // number of cores kept busy (2.0 = both cores of a two-core machine).
  double pp_cpu_util = 0, tg_cpu_util = 0;
};

// Measures `backend` whose vocabulary has `vocab` entries. Errors name the depth
// and the step that failed.
Result<std::vector<BenchRow>> run_bench(Backend& backend, int32_t vocab, const BenchParams& params);

// A backend to benchmark plus whatever it depends on (model, weights), kept alive
// by `owner`.
struct BenchTarget {
  std::string model_name;
  std::string backend_name;
  int32_t vocab = 0;
  Backend* backend = nullptr;
  std::shared_ptr<void> owner;
};

// --synthetic full: weights of the real model's shapes and quant types filled with
// random valid blocks in GPU memory (no file). The CUDA backend provides it by
// declaring `Result<BenchTarget> make_cuda_synthetic_full_target(const
// BackendOptions&)` in cuda/synthetic_full.h; builds without it return an error
// saying that the mode needs the CUDA backend.
Result<BenchTarget> make_synthetic_full_target(const BackendOptions& options);

// Output helpers: a CSV with a header row, and an aligned human-readable table.
std::string bench_csv(const BenchTarget& target, int threads, const std::vector<BenchRow>& rows);
std::string bench_table(const BenchTarget& target, const std::vector<BenchRow>& rows);

}  // namespace ds4
