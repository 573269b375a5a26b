// Programmatic dependent launch (cuda/launch.h) through the decode graph.
//
// 1. Results: tiny-fast and tiny-real (QAT off and on) decoded on the GPU with PDL off,
//    on, and off again, in one process (the switch toggled between runs; each run
//    records its graphs afresh):
//      * 40 teacher-forced tokens through CudaForward::step (the decode graph),
//      * 8 host-free greedy tokens through replay_greedy (the graph that advances its
//        own step block),
//      * a 24-token prefill chunk then 8 decode steps on a second sequence (the eager
//        stream path, where PDL launches meet plain ones).
//    Every logit must be bit-identical between PDL on and off (and between the two
//    off runs: the baseline is deterministic); the greedy tokens must agree. Printed:
//    max |d| and the first differing logit (step, index, values) of each pair.
//    A fourth run with PDL on and every L2 prefetch of the decode graph
//    (CudaForward::set_l2_prefetch) must match the PDL-on run bit for bit too, and so
//    must runs with the other decode schedules (CudaForward::set_decode_schedule) and
//    with the router in a kernel of its own (CudaForward::set_router_fold).
// 2. Timing (reported, not asserted): CUDA graphs of 40 chained matrix-vector
//    products, Q8_0 32768x1024 (35.7 MB, six matrices cycled so they come from device
//    memory), F32 24x16384 (1.6 MB, 40 matrices) and the two alternating, with PDL
//    off and on: microseconds per launch and read GB/s; the chains' outputs are also
//    compared bit for bit.
// Exit 77 without a GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/device_model.h"
#include "cuda/forward.h"
#include "cuda/launch.h"
#include "cuda/matvec.h"
#include "model/model.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

constexpr int kDecodeSteps = 40;
constexpr int kGreedySteps = 8;
constexpr int kPrefillTokens = 24;
constexpr int kStepsAfterPrefill = 8;

struct DecodeRun {
  bool ok = false;
  bool pdl = false;             // the switch as it stood after the run (a fallback turns it off)
  std::vector<float> logits;    // teacher-forced steps, then prefill rows and the steps after them
  std::vector<int32_t> greedy;  // replay_greedy tokens
};

// One run of the decode paths above with PDL `pdl`, the L2 prefetch side branch `l2`
// (default: none) and the decode schedule `schedule`.
DecodeRun run_decode(const DeviceModel& dm, bool qat, bool pdl, const std::vector<int32_t>& tokens,
                     const std::string& what, const CudaForward::L2Prefetch& l2 = {},
                     CudaForward::DecodeSchedule schedule = CudaForward::DecodeSchedule::kBranches,
                     bool router_fold = false) {
  DecodeRun out;
  const bool in_force = set_pdl_enabled(pdl);
  if (pdl && !in_force) std::printf("  %s: the device does not support PDL; the \"on\" run is plain\n", what.c_str());
  auto fw = CudaForward::Create(dm, qat);
  check(fw.ok(), what + ": forward: " + (fw.ok() ? std::string() : fw.status().message()));
  if (!fw.ok()) return out;
  CudaForward& f = **fw;
  f.set_l2_prefetch(l2);
  f.set_decode_schedule(schedule);
  f.set_router_fold(router_fold);
  const int vocab = dm.config().vocab;
  std::vector<float> logits(vocab);

  auto seq = f.new_sequence(512);
  check(seq.ok(), what + ": new sequence");
  if (!seq.ok()) return out;
  for (int i = 0; i < kDecodeSteps; ++i) {
    Status s = f.step(*seq, tokens[i], i, logits.data(), nullptr);
    check(s.ok(), what + ": step " + std::to_string(i) + ": " + s.message());
    if (!s.ok()) return out;
    out.logits.insert(out.logits.end(), logits.begin(), logits.end());
  }
  const int32_t first = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  Status s = f.set_step(*seq, first, kDecodeSteps);
  for (int i = 0; i < kGreedySteps && s.ok(); ++i) {
    s = f.replay_greedy(*seq, 1);
    if (!s.ok()) break;
    auto am = f.last_argmax();
    s = am.status();
    if (am.ok()) out.greedy.push_back(*am);
  }
  check(s.ok(), what + ": greedy replay: " + s.message());
  if (!s.ok()) return out;
  f.free_sequence(*seq);

  auto seq2 = f.new_sequence(512);
  check(seq2.ok(), what + ": second sequence");
  if (!seq2.ok()) return out;
  std::vector<int> rows(kPrefillTokens);
  for (int i = 0; i < kPrefillTokens; ++i) rows[i] = i;
  std::vector<float> prefill_logits(static_cast<size_t>(kPrefillTokens) * vocab);
  s = f.prefill(*seq2, tokens.data(), kPrefillTokens, 0, rows, prefill_logits.data(), {}, nullptr);
  check(s.ok(), what + ": prefill: " + s.message());
  if (!s.ok()) return out;
  out.logits.insert(out.logits.end(), prefill_logits.begin(), prefill_logits.end());
  for (int i = 0; i < kStepsAfterPrefill; ++i) {
    const int pos = kPrefillTokens + i;
    s = f.step(*seq2, tokens[pos], pos, logits.data(), nullptr);
    check(s.ok(), what + ": step after prefill " + std::to_string(pos) + ": " + s.message());
    if (!s.ok()) return out;
    out.logits.insert(out.logits.end(), logits.begin(), logits.end());
  }
  f.free_sequence(*seq2);
  out.pdl = pdl_enabled();
  out.ok = true;
  return out;
}

// Where logit row `row` of a DecodeRun comes from.
std::string row_name(size_t row) {
  if (row < kDecodeSteps) return "decode step " + std::to_string(row);
  row -= kDecodeSteps;
  if (row < kPrefillTokens) return "prefill row " + std::to_string(row);
  return "step after prefill at position " + std::to_string(row);
}

// Bit-for-bit comparison of two runs' logits and greedy tokens.
void compare_runs(const DecodeRun& a, const DecodeRun& b, int vocab, const std::string& what) {
  if (a.logits.size() != b.logits.size()) {
    check(false, what + ": logit counts differ (" + std::to_string(a.logits.size()) + " vs " +
                     std::to_string(b.logits.size()) + ")");
    return;
  }
  size_t differing = 0, first = a.logits.size();
  double max_diff = 0;
  for (size_t i = 0; i < a.logits.size(); ++i) {
    if (std::memcmp(&a.logits[i], &b.logits[i], sizeof(float)) != 0) {
      ++differing;
      if (first == a.logits.size()) first = i;
      const double d = std::fabs(static_cast<double>(a.logits[i]) - b.logits[i]);
      max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
    }
  }
  std::printf("  %s: %zu logits compared, %zu differ, max |d| %.3g\n", what.c_str(), a.logits.size(), differing,
              max_diff);
  if (differing) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s: first differing logit at %s, index %zu: %.9g vs %.9g (%zu differ)",
                  what.c_str(), row_name(first / vocab).c_str(), first % vocab, a.logits[first], b.logits[first],
                  differing);
    check(false, buf);
  } else {
    check(true, what);
  }
  std::string ga, gb;
  for (int32_t t : a.greedy) ga += " " + std::to_string(t);
  for (int32_t t : b.greedy) gb += " " + std::to_string(t);
  check(a.greedy == b.greedy, what + ": greedy tokens differ:" + ga + " vs" + gb);
}

void check_fixture(const std::string& dir) {
  Result<std::unique_ptr<Model>> model = Model::Load(dir + "/model.gguf");
  check(model.ok(), "load " + dir + ": " + (model.ok() ? std::string() : model.status().message()));
  if (!model.ok()) return;
  Result<std::unique_ptr<DeviceModel>> dm = upload_model(**model, 4, nullptr);
  check(dm.ok(), "upload " + dir + ": " + (dm.ok() ? std::string() : dm.status().message()));
  if (!dm.ok()) return;
  const int vocab = (*model)->config().vocab;
  std::vector<int32_t> tokens(kDecodeSteps);
  uint64_t x = 2024;
  for (auto& t : tokens) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<int32_t>((x >> 33) % vocab);
  }
  for (bool qat : {false, true}) {
    const std::string name = dir + (qat ? " (QAT on)" : " (QAT off)");
    const DecodeRun off = run_decode(**dm, qat, false, tokens, name + ", PDL off");
    const DecodeRun on = run_decode(**dm, qat, true, tokens, name + ", PDL on");
    const DecodeRun off2 = run_decode(**dm, qat, false, tokens, name + ", PDL off again");
    const DecodeRun prefetch = run_decode(**dm, qat, true, tokens, name + ", PDL on, every L2 prefetch",
                                          CudaForward::L2Prefetch{true, true, true, true, true});
    using Schedule = CudaForward::DecodeSchedule;
    const DecodeRun moe_serial = run_decode(**dm, qat, true, tokens, name + ", PDL on, shared expert on the main stream",
                                            {}, Schedule::kMoeSerial);
    const DecodeRun serial = run_decode(**dm, qat, true, tokens, name + ", PDL on, one stream", {}, Schedule::kSerial);
    const DecodeRun router_inside = run_decode(**dm, qat, true, tokens, name + ", PDL on, routing inside gate+up",
                                               {}, Schedule::kBranches, true);
    const DecodeRun shared_first = run_decode(**dm, qat, true, tokens, name + ", PDL on, shared expert stored first",
                                              {}, Schedule::kSharedFirst);
    if (!off.ok || !on.ok || !off2.ok || !prefetch.ok || !moe_serial.ok || !serial.ok || !router_inside.ok ||
        !shared_first.ok) {
      continue;
    }
    if (pdl_supported()) {
      check(on.pdl, name + ": PDL was turned off while recording a graph (see the message on stderr)");
    }
    compare_runs(off, off2, vocab, name + ": PDL off vs PDL off (baseline determinism)");
    compare_runs(off, on, vocab, name + ": PDL off vs PDL on");
    compare_runs(on, prefetch, vocab, name + ": PDL on vs PDL on with every L2 prefetch");
    compare_runs(on, moe_serial, vocab, name + ": branches vs the shared expert on the main stream");
    compare_runs(on, serial, vocab, name + ": branches vs one stream");
    compare_runs(on, router_inside, vocab, name + ": a router kernel vs routing inside gate+up");
    compare_runs(on, shared_first, vocab, name + ": shared expert added by hc_post vs stored first");
  }
}

// ---- Graph-chain timing --------------------------------------------------------------

struct ChainResult {
  bool ok = false;
  double us_per_launch = 0;
  std::vector<float> out;  // the chain's outputs after the last replay
};

// Records `enqueue` into a graph with PDL `pdl`, replays it once to warm up and
// `reps` times under events; `read_out` copies the outputs back.
ChainResult time_chain(bool pdl, int launches, int reps, const std::function<Status(cudaStream_t)>& enqueue,
                       const std::function<std::vector<float>()>& read_out, const std::string& what) {
  ChainResult r;
  set_pdl_enabled(pdl);
  cudaStream_t st = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaEvent_t t0 = nullptr, t1 = nullptr;
  cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  cudaEventCreate(&t0);
  cudaEventCreate(&t1);
  Status s = cuda_status(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "begin capture");
  if (s.ok()) {
    s = enqueue(st);
    const cudaError_t end = cudaStreamEndCapture(st, &graph);
    if (s.ok()) s = cuda_status(end, "end capture");
  }
  if (s.ok()) s = cuda_status(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  if (s.ok()) s = cuda_status(cudaGraphLaunch(exec, st), "warm-up replay");
  if (s.ok()) s = cuda_status(cudaStreamSynchronize(st), "warm-up sync");
  if (s.ok()) {
    cudaEventRecord(t0, st);
    for (int i = 0; i < reps; ++i) cudaGraphLaunch(exec, st);
    cudaEventRecord(t1, st);
    s = cuda_status(cudaStreamSynchronize(st), "timed replays");
  }
  check(s.ok(), what + (pdl ? " (PDL on)" : " (PDL off)") + ": " + s.message());
  if (s.ok()) {
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    r.us_per_launch = 1e3 * ms / reps / launches;
    r.out = read_out();
    r.ok = true;
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  cudaStreamDestroy(st);
  return r;
}

void compare_chain(const ChainResult& off, const ChainResult& on, const std::string& what) {
  if (!off.ok || !on.ok) return;
  size_t differing = 0, first = 0;
  for (size_t i = 0; i < off.out.size() && i < on.out.size(); ++i) {
    if (std::memcmp(&off.out[i], &on.out[i], sizeof(float)) != 0 && differing++ == 0) first = i;
  }
  std::printf("    outputs of PDL off and on: %zu values, %zu differ\n", off.out.size(), differing);
  check(off.out.size() == on.out.size() && differing == 0,
        what + ": outputs differ between PDL off and on (" + std::to_string(differing) + " values; first at " +
            std::to_string(first) + ": " + std::to_string(off.out.empty() ? 0.0f : off.out[first]) + " vs " +
            std::to_string(on.out.empty() ? 0.0f : on.out[first]) + ")");
}

void chain_timing() {
  constexpr int kLaunches = 40;
  constexpr int kReps = 20;
  constexpr int kQ8Mats = 6;
  constexpr int kF32Mats = 40;
  const int64_t q_rows = 32768, q_cols = 1024, f_rows = 24, f_cols = 16384;
  std::vector<std::unique_ptr<OwnedDeviceMatrix>> q8, f32;
  for (int i = 0; i < kQ8Mats; ++i) {
    auto m = random_matrix(GgmlType::Q8_0, q_cols, q_rows, 1, 100 + i);
    check(m.ok(), "random Q8_0 matrix: " + (m.ok() ? std::string() : m.status().message()));
    if (!m.ok()) return;
    q8.push_back(std::move(*m));
  }
  for (int i = 0; i < kF32Mats; ++i) {
    auto m = random_matrix(GgmlType::F32, f_cols, f_rows, 1, 200 + i);
    check(m.ok(), "random F32 matrix: " + (m.ok() ? std::string() : m.status().message()));
    if (!m.ok()) return;
    f32.push_back(std::move(*m));
  }
  const double q_bytes = static_cast<double>(q8[0]->m.data_bytes() + q8[0]->m.scale_bytes());
  const double f_bytes = static_cast<double>(f32[0]->m.data_bytes());
  std::mt19937 rng(9);
  DeviceVec<float> x0(random_floats(q_rows, rng, -0.5f, 0.5f));  // the Q8_0 chain's input, restored per replay
  DeviceVec<float> buf_a(q_rows), buf_b(q_rows);
  DeviceVec<float> xf(random_floats(f_cols, rng, -0.5f, 0.5f));
  DeviceVec<float> yf(f_rows), split(32 * 8192);

  // Launch i of a chain: Q8_0 reads the first 1024 outputs of the launch before it
  // (ping-pong buffers); F32 adds W x to a 24-float accumulator.
  auto q8_launch = [&](int qi, cudaStream_t st) {
    MatvecLaunch l;
    l.w = &q8[qi % kQ8Mats]->m;
    l.x = (qi % 2 == 0) ? buf_a.get() : buf_b.get();
    l.y = (qi % 2 == 0) ? buf_b.get() : buf_a.get();
    l.split_workspace = split.get();
    l.split_workspace_floats = 32 * 8192;
    return launch_matvec(l, st);
  };
  auto f32_launch = [&](int fi, cudaStream_t st) {
    MatvecLaunch l;
    l.w = &f32[fi % kF32Mats]->m;
    l.x = xf.get();
    l.y = yf.get();
    l.accumulate = true;
    l.split_workspace = split.get();
    l.split_workspace_floats = 32 * 8192;
    return launch_matvec(l, st);
  };
  auto reset = [&](cudaStream_t st) -> Status {
    DS4_CUDA_TRY(cudaMemcpyAsync(buf_a.get(), x0.get(), sizeof(float) * q_rows, cudaMemcpyDeviceToDevice, st));
    DS4_CUDA_TRY(cudaMemsetAsync(yf.get(), 0, sizeof(float) * f_rows, st));
    return Status::Ok();
  };
  auto outputs = [&]() {
    std::vector<float> o = buf_a.host();
    std::vector<float> b = buf_b.host();
    std::vector<float> y = yf.host();
    o.insert(o.end(), b.begin(), b.end());
    o.insert(o.end(), y.begin(), y.end());
    return o;
  };
  struct Chain {
    const char* name;
    std::function<Status(cudaStream_t)> enqueue;
    double bytes;  // weight bytes read per replay
  };
  std::vector<Chain> chains = {
      {"Q8_0 32768x1024 x40",
       [&](cudaStream_t st) -> Status {
         DS4_RETURN_IF_ERROR(reset(st));
         for (int i = 0; i < kLaunches; ++i) DS4_RETURN_IF_ERROR(q8_launch(i, st));
         return Status::Ok();
       },
       kLaunches * q_bytes},
      {"F32 24x16384 x40",
       [&](cudaStream_t st) -> Status {
         DS4_RETURN_IF_ERROR(reset(st));
         for (int i = 0; i < kLaunches; ++i) DS4_RETURN_IF_ERROR(f32_launch(i, st));
         return Status::Ok();
       },
       kLaunches * f_bytes},
      {"Q8_0 32768x1024 / F32 24x16384 alternating x40",
       [&](cudaStream_t st) -> Status {
         DS4_RETURN_IF_ERROR(reset(st));
         for (int i = 0; i < kLaunches; ++i) {
           DS4_RETURN_IF_ERROR(i % 2 == 0 ? q8_launch(i / 2, st) : f32_launch(i / 2, st));
         }
         return Status::Ok();
       },
       kLaunches / 2 * (q_bytes + f_bytes)},
  };
  std::printf("graph chains (%d launches a graph, %d replays; weights from device memory except where noted):\n",
              kLaunches, kReps);
  for (const Chain& c : chains) {
    const ChainResult off = time_chain(false, kLaunches, kReps, c.enqueue, outputs, c.name);
    const ChainResult on = time_chain(true, kLaunches, kReps, c.enqueue, outputs, c.name);
    if (!off.ok || !on.ok) continue;
    const double per_launch_bytes = c.bytes / kLaunches;
    std::printf("  %-46s PDL off %7.2f us/launch (%6.0f GB/s), PDL on %7.2f us/launch (%6.0f GB/s): %+.1f%%\n", c.name,
                off.us_per_launch, per_launch_bytes / (off.us_per_launch * 1e3), on.us_per_launch,
                per_launch_bytes / (on.us_per_launch * 1e3), 100.0 * (on.us_per_launch / off.us_per_launch - 1.0));
    compare_chain(off, on, c.name);
  }
  std::printf("  (F32 x40 cycles 40 matrices, 63 MB: partly served from L2)\n");
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  std::printf("PDL: device %s programmatic dependent launch; default switch %s (DS4_CUDA_PDL=%s)\n",
              pdl_supported() ? "supports" : "does not support", pdl_enabled() ? "on" : "off",
              std::getenv("DS4_CUDA_PDL") ? std::getenv("DS4_CUDA_PDL") : "unset");
  const char* env = std::getenv("DS4_TEST_DATA");
  const std::string data = env ? env : "tests/data";
  for (const std::string fixture : {"tiny-fast", "tiny-real"}) check_fixture(data + "/" + fixture);
  chain_timing();
  return finish("decode_graph_test");
}
