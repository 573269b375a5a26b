// Full-size speed on the GPU (shared/PERF.md): the real DeepSeek V4 Flash shapes and
// tensor types (about 81 GiB) filled with random valid blocks in GPU memory, then
//   * the read bandwidth of this GPU, measured in the same run;
//   * decode tokens/s at context 0, 4k and 16k (one CUDA graph per token, each token
//     fed the previous argmax, no host work in between), each as a fraction of its
//     limit = bandwidth / bytes read per token (spec/MODEL.md §5.3, f32 KV);
//   * batched prefill of 2048 tokens (one chunk) at depth 0 and 4096;
//   * the upload rate of 4 GiB of Q8_0 blocks from host memory through the staging
//     threads.
// Checks only that the run works (finite logits, valid argmax): speed targets are
// reported, not asserted. Skips visibly on GPUs with too little memory.
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/bandwidth.h"
#include "cuda/dense_matvec.h"
#include "cuda/device_model.h"
#include "cuda/forward.h"
#include "cuda/launch.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Bytes read per decoded token (MODEL.md §5.3, KV in f32 as stored here).
double bytes_per_token(int ctx) {
  if (ctx == 0) return 9195874724.0;
  if (ctx == 4096) return 9604731300.0;
  return 9641693604.0;  // 16384
}

}  // namespace

// Prints (stage, milliseconds) pairs with each stage's share of their sum.
static void print_profile(const char* title, const std::vector<std::pair<std::string, double>>& stages) {
  double total = 0;
  for (auto& st : stages) total += st.second;
  std::printf("%s, %.3f ms in all:\n", title, total);
  for (auto& st : stages) {
    std::printf("  %-36s %8.3f ms  %5.1f%%\n", st.first.c_str(), st.second, 100 * st.second / total);
  }
}

int main() {
  if (!gpu_present()) return 77;
  size_t free_bytes = 0, total = 0;
  cudaMemGetInfo(&free_bytes, &total);
  if (free_bytes < (size_t{90} << 30)) {
    std::printf("SKIP: %.1f GiB free on the GPU; the full-size synthetic model needs about 84 GiB\n",
                free_bytes / (1024.0 * 1024.0 * 1024.0));
    return 77;
  }
  auto bw = measure_read_bandwidth(size_t{4} << 30, 10);
  check(bw.ok(), "bandwidth measurement");
  if (!bw.ok()) return finish("synthetic_full_test");
  const double bandwidth = *bw;
  std::printf("read bandwidth: %.1f GB/s (sum over 4 GiB, best of 10)\n", bandwidth / 1e9);
  std::printf("programmatic dependent launch: %s (DS4_CUDA_PDL=0 turns it off)\n", pdl_enabled() ? "on" : "off");

  {  // Upload rate through the staging threads (host memory -> GPU).
    const int64_t cols = 4096, rows = 1 << 20;  // 4.25 GiB of Q8_0
    std::vector<uint8_t> host(static_cast<size_t>(rows) * (cols / 32) * 34);
    std::mt19937 rng(5);
    for (size_t i = 0; i < host.size(); i += 4096) host[i] = static_cast<uint8_t>(rng());
    for (int threads : {1, 8}) {
      UploadStats st;
      auto m = upload_matrix(GgmlType::Q8_0, cols, rows, 1, host.data(), threads, &st);
      check(m.ok(), "upload of 4.25 GiB");
      if (m.ok()) std::printf("upload: %.2f GiB in %.2f s with %d staging threads: %.2f GiB/s\n",
                              st.bytes / (1024.0 * 1024.0 * 1024.0), st.seconds, threads, st.gib_per_s());
    }
  }

  const ModelConfig config = deepseek_v4_flash_config();
  auto t0 = Clock::now();
  auto model = make_synthetic_model(config, 7);
  check(model.ok(), "synthetic model: " + (model.ok() ? std::string() : model.status().message()));
  if (!model.ok()) return finish("synthetic_full_test");
  std::printf("synthetic model: %.2f GiB of weights generated on the GPU in %.2f s\n",
              (*model)->device_bytes() / (1024.0 * 1024.0 * 1024.0), seconds_since(t0));
  auto fw = CudaForward::Create(**model, true);
  check(fw.ok(), "forward: " + (fw.ok() ? std::string() : fw.status().message()));
  if (!fw.ok()) return finish("synthetic_full_test");
  CudaForward& f = **fw;

  // Sanity: one step with logits back on the host.
  {
    auto id = f.new_sequence(64);
    std::vector<float> logits(config.vocab), hidden(config.hc_dim());
    Status s = f.step(*id, 1, 0, logits.data(), hidden.data());
    check(s.ok(), "first step: " + s.message());
    int finite = 0;
    for (float v : logits) finite += std::isfinite(v);
    check(finite == config.vocab, "logits are finite (" + std::to_string(finite) + " of " +
                                      std::to_string(config.vocab) + ")");
    auto am = f.last_argmax();
    check(am.ok() && *am >= 0 && *am < config.vocab, "argmax is a token id");
    f.free_sequence(*id);
  }

  // Decode: 64 graph replays, each fed the previous argmax, at context `ctx` in a new
  // sequence (so its graphs are recorded with the current settings); seconds per token.
  const int ctx_max = 16384 + 512;
  auto time_decode = [&](int ctx, bool profile) -> double {
    auto id = f.new_sequence(ctx_max);
    check(id.ok(), "sequence");
    if (!id.ok()) return 0;
    Status s = ctx ? f.fill_context_random(*id, ctx, 11) : f.set_step(*id, 1, 0);
    check(s.ok(), "context fill: " + s.message());
    s = f.replay_greedy(*id, 3);  // records the graph, warms up
    check(s.ok(), "warm-up decode: " + s.message());
    (void)(ctx ? f.fill_context_random(*id, ctx, 11) : f.set_step(*id, 1, 0));
    const int n = 64;
    const auto t = Clock::now();
    s = f.replay_greedy(*id, n);
    const double secs = seconds_since(t) / n;
    check(s.ok(), "timed decode: " + s.message());
    if (profile) {  // where the time goes (no graph; events between stages)
      auto prof = f.profile_step(*id);
      check(prof.ok(), "profile step");
      if (prof.ok()) print_profile("profile at ctx 4096 (one token, no graph)", *prof);
    }
    f.free_sequence(*id);
    return s.ok() ? secs : 0;
  };
  auto report = [&](int ctx, const char* variant, double secs) {
    if (secs <= 0) return;
    const double limit = bandwidth / bytes_per_token(ctx);
    std::printf("decode ctx %5d%s: %7.1f t/s (%.3f ms/token); limit %.1f t/s (%.2f GB/token) -> %.1f%% of the limit\n",
                ctx, variant, 1 / secs, 1e3 * secs, limit, bytes_per_token(ctx) / 1e9, 100.0 / secs / limit);
  };
  for (int ctx : {0, 4096, 16384}) report(ctx, "", time_decode(ctx, ctx == 4096));
  // The same at context 0 and 4096 with one feature off at a time.
  struct Feature {
    const char* off_label;
    bool available;
    std::function<void(bool)> set;
  };
  const Feature features[] = {
      {" with PDL off", pdl_enabled(), [](bool on) { set_pdl_enabled(on); }},
      {" with the generic expert kernel", true, [&](bool on) { f.set_expert_kernels(on); }},
      {" with the generic dense kernel", true, [](bool on) { set_dense_matvec_enabled(on); }},
      {" with hc_post and mixing unfused", true, [&](bool on) { f.set_fused_hc(on); }},
  };
  for (int ctx : {0, 4096}) {
    for (const Feature& feature : features) {
      if (!feature.available) continue;
      feature.set(false);
      report(ctx, feature.off_label, time_decode(ctx, false));
      feature.set(true);
    }
  }

  {  // Batched prefill (CudaForward::prefill): 2048 tokens in one chunk, at depth 0 and
     // after 4096 tokens, logits of the last token back on the host.
    const int pp = 2048;
    std::vector<int32_t> tokens(pp);
    for (int i = 0; i < pp; ++i) tokens[i] = (i * 7919 + 13) % config.vocab;
    std::vector<float> logits(config.vocab);
    const int last[1] = {pp - 1};
    for (int depth : {0, 4096}) {
      auto id = f.new_sequence(depth + pp + 16);
      check(id.ok(), "prefill sequence");
      if (!id.ok()) break;
      Status s = f.prefill(*id, tokens.data(), pp, 0, last, logits.data(), {}, nullptr);  // warm-up
      check(s.ok(), "prefill warm-up: " + s.message());
      if (depth) s = f.fill_context_random(*id, depth, 5);
      const auto t = Clock::now();
      s = f.prefill(*id, tokens.data(), pp, depth, last, logits.data(), {}, nullptr);
      const double secs = seconds_since(t);
      check(s.ok(), "prefill: " + s.message());
      bool finite = true;
      for (float v : logits) finite = finite && std::isfinite(v);
      check(finite, "prefill logits finite");
      std::printf("prefill pp%d @ depth %d: %.1f t/s (%.1f ms); target 10000 t/s\n", pp, depth, pp / secs,
                  1e3 * secs);
      if (depth == 0) {  // where the time goes: the same chunk again, events between stages
        f.free_sequence(*id);
        id = f.new_sequence(depth + pp + 16);
        check(id.ok(), "prefill sequence");
        if (!id.ok()) break;
        auto prof = f.profile_prefill(*id, tokens.data(), pp, 0);
        check(prof.ok(), "profile prefill");
        if (prof.ok()) print_profile("prefill profile (2048 tokens, depth 0)", *prof);
      }
      f.free_sequence(*id);
    }
  }
  return finish("synthetic_full_test");
}
