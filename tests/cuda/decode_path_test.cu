// The decode critical path after the q_b product, in its fused forms, against the
// launches they replace and the CPU reference (engine/cpu/*):
//   1. attention with the q row post folded in (q_norm_rope: per-head RMSNorm without
//      weight, RoPE of the tail) and the split combine folded in (fold_combine: the last
//      block of a head group combines; fit_splits: only the splits that hold rows run)
//      against launch_row_post followed by the separate partial and combine launches:
//      bit for bit (with fit_splits, against the separate launches with the splits the
//      fused kernel used), and against the CPU reference within its tolerance; the q it
//      writes (q_out) bit for bit against launch_row_post; the completion counters left
//      zero; real shapes (64 heads x 512, rope 64, window 128, ratios 0 / 4 / 128 at
//      contexts 10, 4096 and 16384, the indexer's 512 selected rows) and tiny ones
//      (4 heads x 128, 20 heads x 192: partial head groups), a tagged raw ring;
//   1b. the staged attention kernel (attention.h `staged`: rows copied into shared memory
//      first) for several shapes (heads per block 2 / 4 / 8, rows per split 24 to 64) and
//      attention_decode_plan()'s, against the separate launches with the splits it used,
//      bit for bit, and the CPU reference; with the combine launch, the q post separate and
//      every split running; shapes it does not take refused with a message;
//   1c. the indexer select (scores and top-k) with the current kernels against the
//      previous ones (scores bit for bit, the same selection) and the CPU reference, at
//      1024, 4096 and 16384 index rows, score buffers for 16k, 64k and 1M contexts, the
//      gate closed, 8 / 16 / 20 heads;
//   2. the block-wide router selection against the one-warp kernel (ids in order and
//      weights bit for bit) and the CPU reference: 256 experts / 6 used with and
//      without the selection bias, hash routing, exact ties, NaN logits, 8 and 64
//      experts, several tokens per launch;
//   3. bad launches refused with a message.
// Every output buffer is NaN-filled before the launch under test. Prints "timing:" lines:
// CUDA graphs of 40 chained launches (PDL as the forward pass uses it), old against new,
// in microseconds per step, and at the end one table for attention (the forward pass's
// launch now against each staged shape and the plan) and one for the indexer select.
// Exit 77 without a GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cpu/attention.h"
#include "cpu/indexer.h"
#include "cpu/moe.h"
#include "cpu/rope.h"
#include "cpu/vector_ops.h"
#include "cuda/attention.h"
#include "cuda/compressor_indexer.h"
#include "cuda/cuda_check.h"
#include "cuda/device_limits.h"
#include "cuda/device_model.h"
#include "cuda/launch.h"
#include "cuda/moe.h"
#include "cuda/row_ops.h"
#include "cuda_test_util.h"
#include "model/model.h"

using namespace ds4;
using namespace ds4::test;

namespace {

constexpr int kChain = 40;

void fill_nan(float* p, size_t n) { cudaMemset(p, 0xff, sizeof(float) * n); }

// Elements whose bits differ; prints the first few (index, got, want).
int count_bits_differ(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      if (bad++ < 3) std::printf("  %s[%zu]: got %.9g want %.9g\n", what.c_str(), i, got[i], want[i]);
    }
  }
  if (bad) std::printf("  %s: %d of %zu elements differ\n", what.c_str(), bad, want.size());
  return bad;
}

int count_not_finite(const std::vector<float>& v, const std::string& what) {
  int bad = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i]) && bad++ < 3) std::printf("  %s[%zu] = %g (not written?)\n", what.c_str(), i, v[i]);
  }
  return bad;
}

int count_bad(const std::vector<float>& gpu, const std::vector<float>& cpu, double rel, double abs_tol,
              const std::string& what) {
  int bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double d = std::fabs(static_cast<double>(gpu[i]) - cpu[i]);
    worst = std::max(worst, d);
    if (!(d <= rel * std::fabs(cpu[i]) + abs_tol)) {
      if (bad++ < 3) std::printf("  %s[%zu]: gpu %.9g cpu %.9g\n", what.c_str(), i, gpu[i], cpu[i]);
    }
  }
  if (bad) std::printf("  %s: %d of %zu outside tolerance (max |d| %.3g)\n", what.c_str(), bad, cpu.size(), worst);
  return bad;
}

// Microseconds per step of `steps` chained launches recorded as one CUDA graph (PDL as
// the launches choose), replayed after warm-up; negative when recording failed.
double graph_us_per_step(cudaStream_t stream, const std::function<Status(cudaStream_t)>& enqueue_steps,
                         int steps, const std::string& what) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return -1.0;
  const Status s = enqueue_steps(stream);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  check(s.ok() && end == cudaSuccess, what + ": graph recorded (" + s.message() + ")");
  if (!s.ok() || end != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return -1.0;
  }
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check(inst == cudaSuccess, what + ": graph instantiated");
  if (inst != cudaSuccess) return -1.0;
  for (int i = 0; i < 3; ++i) cudaGraphLaunch(exec, stream);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  const int reps = 20;
  cudaEventRecord(a, stream);
  for (int i = 0; i < reps; ++i) cudaGraphLaunch(exec, stream);
  cudaEventRecord(b, stream);
  cudaEventSynchronize(b);
  float ms = 0.0f;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  check(cudaStreamSynchronize(stream) == cudaSuccess, what + ": graph replays ran");
  return 1000.0 * ms / reps / steps;
}

// ---------------------------------------------------------------- attention

struct AttentionCase {
  std::string name;
  int heads, head_dim, window, ratio, pos;
  int64_t max_comp;  // compressed rows stored
  int topk;
  bool tagged;       // raw ring with position tags (the MTP block's), some slots stale
  bool time_it;
};

// Host inputs, device copies and the CPU reference of one case.
struct AttentionData {
  const AttentionCase& k;
  ModelConfig c;
  cpu::Rope rope;
  int ring, nraw, nc, n_rows, max_visible, splits;
  bool active;
  std::vector<float> q, raw, comp, sinks;
  std::vector<int32_t> sel, tags;
  std::vector<float> q_ref;    // q after the CPU row post
  std::vector<float> out_ref;  // CPU attention of q_ref
  DeviceVec<float> dq, draw, dcomp, dsink, dfreq;
  DeviceVec<int32_t> dsel, dact, dpos, dtags;

  static ModelConfig config_for(const AttentionCase& k) {
    ModelConfig c = deepseek_v4_flash_config();
    c.n_heads = k.heads;
    c.head_dim = k.head_dim;
    return c;
  }

  AttentionData(const AttentionCase& kc, std::mt19937& rng)
      : k(kc),
        c(config_for(kc)),
        rope(c, kc.ratio != 0),
        ring(kc.window + 16),
        nraw(std::min(kc.pos + 1, kc.window)),
        nc(kc.ratio ? (kc.pos + 1) / kc.ratio : 0),
        n_rows(0),
        max_visible(kc.window + (kc.ratio == 4 ? std::min<int>(kc.topk, kc.max_comp)
                                                : kc.ratio ? static_cast<int>(kc.max_comp) : 0)),
        splits(std::clamp(max_visible / 64, 1, 16)),
        active(kc.ratio == 4 && nc > kc.topk),
        q(random_floats(static_cast<size_t>(kc.heads) * kc.head_dim, rng, -3.0f, 3.0f)),
        raw(random_floats(static_cast<size_t>(ring) * kc.head_dim, rng)),
        comp(random_floats(static_cast<size_t>(kc.max_comp) * kc.head_dim, rng)),
        sinks(random_floats(kc.heads, rng, -1.0f, 2.0f)),
        sel(pick_selection(kc, nc, active, rng)),
        tags(ring_tags(kc, ring)),
        dq(q),
        draw(raw),
        dcomp(comp),
        dsink(sinks),
        dfreq(rope.freqs()),
        dsel(sel),
        dact(std::vector<int32_t>{active ? 1 : 0}),
        dpos(std::vector<int32_t>{kc.pos}),
        dtags(tags) {
    const int H = k.heads, D = k.head_dim;
    q_ref.resize(q.size());
    for (int h = 0; h < H; ++h) {
      float* row = q_ref.data() + static_cast<size_t>(h) * D;
      cpu::rms_norm(q.data() + static_cast<size_t>(h) * D, nullptr, D, c.norm_eps, row);
      rope.rotate(row + D - c.rope_dim, k.pos);
    }
    std::vector<const float*> rows;
    for (int r = 0; r < nraw; ++r) {
      const int t = k.pos - nraw + 1 + r;
      if (k.tagged && tags[t % ring] != t) continue;  // absent rows weigh nothing
      rows.push_back(raw.data() + static_cast<size_t>(t % ring) * D);
    }
    if (active) {
      for (int32_t s : sel) rows.push_back(comp.data() + static_cast<size_t>(s) * D);
    } else {
      for (int i = 0; i < std::min<int64_t>(nc, k.max_comp); ++i) rows.push_back(comp.data() + static_cast<size_t>(i) * D);
    }
    n_rows = nraw + (active ? k.topk : static_cast<int>(std::min<int64_t>(nc, k.max_comp)));
    out_ref.resize(q.size());
    std::vector<float> scores(rows.size() + 1);
    for (int h = 0; h < H; ++h) {
      float* o = out_ref.data() + static_cast<size_t>(h) * D;
      cpu::attend_head(q_ref.data() + static_cast<size_t>(h) * D, rows.data(), static_cast<int64_t>(rows.size()), D,
                       sinks[h], 1.0f / std::sqrt(static_cast<float>(D)), o, scores.data());
      rope.rotate(o + D - c.rope_dim, k.pos, true);
    }
  }

  // About half the compressed rows spread over the context, then the last ones to fill
  // up, sorted (the indexer's selection is a set).
  static std::vector<int32_t> pick_selection(const AttentionCase& k, int nc, bool active, std::mt19937& rng) {
    if (!active) return {0};
    std::vector<int32_t> sel;
    std::vector<char> picked(nc, 0);
    for (int i = 0; i < nc && static_cast<int>(sel.size()) < k.topk; ++i) {
      if (rng() % 2) {
        sel.push_back(i);
        picked[i] = 1;
      }
    }
    for (int i = nc - 1; static_cast<int>(sel.size()) < k.topk; --i) if (!picked[i]) sel.push_back(i);
    std::sort(sel.begin(), sel.end());
    return sel;
  }

  // Tags of the ring: every slot holds its position, except every fifth window row.
  static std::vector<int32_t> ring_tags(const AttentionCase& k, int ring) {
    std::vector<int32_t> tags(ring, -1);
    if (!k.tagged) return tags;
    for (int t = std::max(0, k.pos - k.window + 1); t <= k.pos; ++t) tags[t % ring] = (t % 5 == 3) ? -1 : t;
    return tags;
  }

  AttentionLaunch launch(float* out, float* workspace) const {
    AttentionLaunch a;
    a.q = dq.get();
    a.out = out;
    a.raw = draw.get();
    a.ring = ring;
    a.raw_tags = k.tagged ? dtags.get() : nullptr;
    a.window = k.window;
    a.comp = dcomp.get();
    a.max_comp_rows = k.max_comp;
    a.ratio = k.ratio;
    a.topk = k.topk;
    a.selected = dsel.get();
    a.active = dact.get();
    a.sinks = dsink.get();
    a.heads = k.heads;
    a.head_dim = k.head_dim;
    a.rope_dim = c.rope_dim;
    a.rope_freqs = dfreq.get();
    a.pos = dpos.get();
    a.max_visible = max_visible;
    a.splits = splits;
    a.head_group = 2;
    a.workspace = workspace;
    a.q_norm_eps = c.norm_eps;
    return a;
  }

  RowPostLaunch q_post(float* out) const {
    RowPostLaunch r;
    r.in = dq.get();
    r.out = out;
    r.in_stride = r.out_stride = k.head_dim;
    r.n_rows = k.heads;
    r.d = k.head_dim;
    r.norm = true;
    r.eps = c.norm_eps;
    r.rope_dim = c.rope_dim;
    r.rope_freqs = dfreq.get();
    r.pos = dpos.get();
    return r;
  }
};

// The launches the fused kernel replaces: the q row post into q_post, then the
// head-group partial kernel and the combine with `splits` splits.
Status launch_old_path(const AttentionData& d, int splits, int group, float* q_post, float* out, float* ws,
                       cudaStream_t st) {
  DS4_RETURN_IF_ERROR(launch_row_post(d.q_post(q_post), st));
  AttentionLaunch a = d.launch(out, ws);
  a.q = q_post;
  a.splits = splits;
  a.head_group = group;
  return launch_attention_decode(a, st);
}

int read_counters_nonzero(const float* ws, int heads) {
  std::vector<int32_t> c(attention_counter_floats(heads));
  cudaMemcpy(c.data(), ws, sizeof(int32_t) * c.size(), cudaMemcpyDeviceToHost);
  int nonzero = 0;
  for (int32_t v : c) nonzero += v != 0;
  return nonzero;
}

// ------------------------------------------------ staged attention (attention.h `staged`)

// Splits the workspaces of the staged checks hold.
constexpr int kStagedMaxSplits = 64;

// The staged shapes checked and timed: heads per block, rows per split.
struct StagedShape {
  int group, rows_per_split;
};
constexpr StagedShape kStagedShapes[] = {{2, 32}, {4, 32}, {8, 24}, {8, 32}, {4, 40}, {8, 40}, {2, 64}, {4, 64}, {8, 64}};

std::string staged_name(int group, int rows_per_split) {
  return "staged g" + std::to_string(group) + " r" + std::to_string(rows_per_split);
}

// A staged launch of `d` with `plan`, q post and combine folded, fit_splits.
AttentionLaunch staged_launch(const AttentionData& d, const AttentionPlan& plan, float* out, float* ws, float* q_out) {
  AttentionLaunch a = d.launch(out, ws);
  a.splits = plan.splits;
  a.head_group = plan.head_group;
  a.staged = plan.staged;
  a.q_norm_rope = a.fold_combine = a.fit_splits = true;
  a.q_out = q_out;
  return a;
}

// One staged launch (variant: 0 q post + combine folded + fit splits; 1 the combine
// launch instead of the fold; 2 the q already post-processed (q_norm_rope off); 3 every
// split runs (fit_splits off)) against the separate launches with the splits it used,
// bit for bit, and against the CPU reference.
void check_staged_launch(const AttentionData& d, const std::string& at, const AttentionPlan& plan, int variant,
                         cudaStream_t st) {
  const int H = d.k.heads, D = d.k.head_dim;
  const size_t n = static_cast<size_t>(H) * D;
  DeviceVec<float> q_post(n), q_out(n), out_old(n), out_new(n);
  DeviceVec<float> ws_old(attention_workspace_floats(H, kStagedMaxSplits, D)),
      ws_new(attention_workspace_floats(H, kStagedMaxSplits, D));
  const char* variants[4] = {"", ", combine launch", ", q post separate", ", every split"};
  const std::string name = at + " " + staged_name(plan.head_group, (d.max_visible + plan.splits - 1) / plan.splits) +
                           " (" + std::to_string(plan.splits) + " splits" + variants[variant] + ")";
  AttentionLaunch a = staged_launch(d, plan, out_new.get(), ws_new.get(), q_out.get());
  a.fold_combine = variant != 1;
  a.fit_splits = variant != 3;
  if (variant == 2) {
    a.q_norm_rope = false;
    a.q_out = nullptr;
    a.q = q_post.get();
  }
  if (!attention_staged_applies(a)) {
    // Only shapes the kernel does not take (head_dim not a multiple of 128, or rows beyond
    // the device's shared memory per block, with a margin) may be refused.
    const int cap = (d.max_visible + a.splits - 1) / a.splits, G = a.head_group;
    const int64_t estimate = 4LL * cap * D + 4LL * G * D + 8LL * cap + 4LL * G * (cap + 4 + a.splits);
    const bool expected = D % 128 == 0 && D <= 512 && estimate + 4096 <= max_shared_per_block();
    std::printf("%s: the staged kernel does not apply (about %lld bytes of shared memory, %d allowed)\n",
                name.c_str(), static_cast<long long>(estimate), max_shared_per_block());
    check(!expected, name + ": the staged kernel applies");
    const Status s = launch_attention_decode(a, st);
    check(!s.ok() && s.message().find("staged") != std::string::npos, name + ": refused with a message: " + s.message());
    return;
  }
  const int used = attention_splits_in_use(a, d.n_rows);
  for (float* p : {out_old.get(), out_new.get(), q_post.get(), q_out.get()}) fill_nan(p, n);
  check(launch_old_path(d, used, plan.head_group, q_post.get(), out_old.get(), ws_old.get(), st).ok(),
        name + ": separate launches (splits " + std::to_string(used) + ")");
  check(cudaStreamSynchronize(st) == cudaSuccess, name + ": separate launches run");
  const Status s = launch_attention_decode(a, st);
  check(s.ok(), name + ": launch (" + s.message() + ")");
  check(cudaStreamSynchronize(st) == cudaSuccess, name + ": runs");
  const std::vector<float> got = out_new.host(), want = out_old.host();
  check(count_not_finite(got, name + " out") == 0, name + ": every output written");
  check(count_bits_differ(got, want, name + " out") == 0,
        name + ": output bit-identical to the separate launches with " + std::to_string(used) + " splits");
  check(count_bad(got, d.out_ref, 1e-4, 2e-6, name + " vs cpu") == 0, name + ": output matches the CPU reference");
  if (a.q_norm_rope) {
    check(count_bits_differ(q_out.host(), q_post.host(), name + " q_out") == 0, name + ": q_out bit-identical to row_post");
  }
  if (a.fold_combine) {
    check(read_counters_nonzero(ws_new.get(), H) == 0, name + ": completion counters left zero");
    fill_nan(out_new.get(), n);
    check(launch_attention_decode(a, st).ok(), name + ": second launch");
    check(cudaStreamSynchronize(st) == cudaSuccess, name + ": second launch runs");
    check(count_bits_differ(out_new.host(), want, name + " out (again)") == 0, name + ": second launch, same bits");
  }
}

void check_staged_attention(const AttentionData& d, const std::string& at, cudaStream_t st) {
  for (const StagedShape& shape : kStagedShapes) {
    const AttentionPlan plan = attention_staged_plan(d.max_visible, shape.rows_per_split, shape.group, kStagedMaxSplits);
    check(plan.staged && plan.head_group == shape.group && plan.splits >= 1 &&
              (d.max_visible + plan.splits - 1) / plan.splits <= shape.rows_per_split,
          at + " " + staged_name(shape.group, shape.rows_per_split) + ": the staged plan's splits hold the rows");
    check_staged_launch(d, at, plan, 0, st);
  }
  const AttentionPlan plan = attention_decode_plan(d.k.heads, d.k.head_dim, d.max_visible, d.k.ratio, 16);
  check(plan.splits >= 1 && plan.splits <= 16, at + ": the decode plan's splits within the workspace");
  const char* env = std::getenv("DS4_CUDA_STAGED_ATTENTION");
  if (env == nullptr || std::string(env) != "1") {
    check(!plan.staged, at + ": the decode plan is the fused kernel unless DS4_CUDA_STAGED_ATTENTION=1");
  } else if (std::getenv("DS4_CUDA_MAX_SHARED_PER_BLOCK") == nullptr && d.k.head_dim % 128 == 0 &&
             d.k.head_dim <= 512) {
    check(plan.staged, at + ": the decode plan is staged with DS4_CUDA_STAGED_ATTENTION=1");
  }
  // The staged shape the plan takes when asked (16 splits of 40 rows, four heads, for ratio
  // 4; else splits of 32 rows and head pairs), with each of the plan's variants.
  const AttentionPlan asked = d.k.ratio == 4 ? attention_staged_plan(d.max_visible, 40, 4, 16)
                                             : attention_staged_plan(d.max_visible, 32, 2, 16);
  for (int variant = 0; variant < 4; ++variant) check_staged_launch(d, at + " staged plan", asked, variant, st);
}

// One row of the timing table: microseconds per step for each column.
struct TimingRow {
  std::string name;
  std::vector<double> us;
};
std::vector<std::string> g_timing_columns;
std::vector<TimingRow> g_timing_rows;
std::vector<TimingRow> g_indexer_timings;

void time_staged_attention(const AttentionData& d, const std::string& at, double us_default, cudaStream_t st) {
  const int H = d.k.heads, D = d.k.head_dim;
  DeviceVec<float> out(static_cast<size_t>(H) * D), ws(attention_workspace_floats(H, kStagedMaxSplits, D));
  std::vector<std::string> columns = {"fused (now)"};
  TimingRow row{at, {us_default}};
  auto time_plan = [&](const AttentionPlan& plan, const std::string& column) {
    AttentionLaunch a = staged_launch(d, plan, out.get(), ws.get(), nullptr);
    double us = -1.0;
    if (attention_staged_applies(a)) {
      std::printf("staged shape %s for %s: %d splits of up to %d rows, %d in use, %d blocks per SM resident\n",
                  column.c_str(), at.c_str(), a.splits, (d.max_visible + a.splits - 1) / a.splits,
                  attention_splits_in_use(a, d.n_rows), attention_staged_blocks_per_sm(a));
      us = graph_us_per_step(
          st,
          [&](cudaStream_t s) -> Status {
            for (int i = 0; i < kChain; ++i) DS4_RETURN_IF_ERROR(launch_attention_decode(a, s));
            return Status::Ok();
          },
          kChain, at + " " + column);
    }
    columns.push_back(column);
    row.us.push_back(us);
  };
  for (const StagedShape& shape : kStagedShapes) {
    time_plan(attention_staged_plan(d.max_visible, shape.rows_per_split, shape.group, kStagedMaxSplits),
              staged_name(shape.group, shape.rows_per_split));
  }
  const AttentionPlan plan = attention_decode_plan(H, D, d.max_visible, d.k.ratio, 16);
  time_plan(plan, "plan (" + std::to_string(plan.splits) + " splits, g" + std::to_string(plan.head_group) + ")");
  std::string line = "timing: attention " + at + ", graph of " + std::to_string(kChain) + " steps, us per step:";
  for (size_t c = 0; c < columns.size(); ++c) {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%s %s %.2f", c ? ";" : "", columns[c].c_str(), row.us[c]);
    line += buf;
  }
  std::printf("%s\n", line.c_str());
  columns.back() = "plan";
  if (g_timing_columns.empty()) g_timing_columns = columns;
  g_timing_rows.push_back(row);
}

void print_timing_table() {
  if (g_timing_rows.empty()) return;
  std::printf("\ntiming table: decode attention, graphs of %d chained launches, us per launch "
              "(fused (now): the forward pass's launch before the staged kernel; -1: not applicable)\n",
              kChain);
  std::printf("| case |");
  for (const std::string& c : g_timing_columns) std::printf(" %s |", c.c_str());
  std::printf("\n|---|");
  for (size_t c = 0; c < g_timing_columns.size(); ++c) std::printf("---|");
  std::printf("\n");
  for (const TimingRow& r : g_timing_rows) {
    std::printf("| %s |", r.name.c_str());
    for (double us : r.us) std::printf(" %.2f |", us);
    std::printf("\n");
  }
}

void check_attention_case(const AttentionCase& k, std::mt19937& rng, cudaStream_t st) {
  AttentionData d(k, rng);
  const int H = k.heads, D = k.head_dim;
  const size_t n = static_cast<size_t>(H) * D;
  DeviceVec<float> q_post(n), q_out(n), out_old(n), out_new(n);
  DeviceVec<float> ws_old(attention_workspace_floats(H, 16, D)), ws_new(attention_workspace_floats(H, 16, D));
  const std::string at = k.name + " (" + std::to_string(H) + " heads x " + std::to_string(D) + ", ratio " +
                         std::to_string(k.ratio) + ", pos " + std::to_string(k.pos) + ", rows " +
                         std::to_string(d.n_rows) + ", splits " + std::to_string(d.splits) + ")";
  const int used = attention_splits_in_use([&] {
    AttentionLaunch a = d.launch(out_new.get(), ws_new.get());
    a.fold_combine = a.fit_splits = true;
    return a;
  }(), d.n_rows);
  for (int group : {2, 4, 8}) {
    // The fused variants: q post only; + fold_combine; + fit_splits; fit_splits alone.
    const char* variants[4] = {" q post folded", " q post + combine folded", " q post + combine folded, fit splits",
                               " q post folded, fit splits"};
    for (int variant = 0; variant < 4; ++variant) {
      AttentionLaunch a = d.launch(out_new.get(), ws_new.get());
      a.head_group = group;
      a.q_norm_rope = true;
      a.q_out = q_out.get();
      a.fold_combine = variant == 1 || variant == 2;
      a.fit_splits = variant >= 2;
      const int splits_ref = variant >= 2 ? used : d.splits;
      const std::string name = at + " group " + std::to_string(group) + variants[variant];
      check(attention_fused_applies(a) && attention_folds_q_post(a), name + ": the fused kernel applies");
      for (float* p : {out_old.get(), out_new.get(), q_post.get(), q_out.get()}) fill_nan(p, n);
      check(launch_old_path(d, splits_ref, group, q_post.get(), out_old.get(), ws_old.get(), st).ok(),
            name + ": separate launches (splits " + std::to_string(splits_ref) + ")");
      const Status s = launch_attention_decode(a, st);
      check(s.ok(), name + ": launch (" + s.message() + ")");
      check(cudaStreamSynchronize(st) == cudaSuccess, name + ": runs");
      const std::vector<float> got = out_new.host(), want = out_old.host();
      check(count_not_finite(got, name + " out") == 0, name + ": every output written");
      check(count_bits_differ(got, want, name + " out") == 0, name + ": output bit-identical to the separate launches");
      check(count_bad(got, d.out_ref, 1e-4, 2e-6, name + " vs cpu") == 0, name + ": output matches the CPU reference");
      const std::vector<float> qo = q_out.host();
      check(count_bits_differ(qo, q_post.host(), name + " q_out") == 0, name + ": q_out bit-identical to row_post");
      check(count_bad(qo, d.q_ref, 2e-5, 1e-6, name + " q vs cpu") == 0, name + ": q matches the CPU row post");
      if (a.fold_combine) {
        check(read_counters_nonzero(ws_new.get(), H) == 0, name + ": completion counters left zero");
        // A second launch reuses the counters: the same bits again.
        fill_nan(out_new.get(), n);
        check(launch_attention_decode(a, st).ok(), name + ": second launch");
        check(cudaStreamSynchronize(st) == cudaSuccess, name + ": second launch runs");
        check(count_bits_differ(out_new.host(), want, name + " out (again)") == 0, name + ": second launch, same bits");
      }
    }
  }
  check_staged_attention(d, at, st);
  std::printf("attention %s: fit_splits uses %d of %d splits\n", at.c_str(), used, d.splits);
  if (!k.time_it) return;
  // Timing: chains of kChain steps; each step's launches as the forward pass makes them.
  auto chain = [&](int variant) {
    return [&, variant](cudaStream_t s) -> Status {
      for (int i = 0; i < kChain; ++i) {
        if (variant == 0) {
          DS4_RETURN_IF_ERROR(launch_old_path(d, d.splits, 2, q_post.get(), out_old.get(), ws_old.get(), s));
        } else {
          AttentionLaunch a = d.launch(out_new.get(), ws_new.get());
          a.q_norm_rope = true;
          a.fold_combine = variant == 2 || variant == 3;
          a.fit_splits = variant >= 3;
          DS4_RETURN_IF_ERROR(launch_attention_decode(a, s));
        }
      }
      return Status::Ok();
    };
  };
  double us[5];
  const char* names[5] = {"row_post + partial + combine", "fused q + combine", "fused q + folded combine",
                          "fused q + folded combine + fit splits", "fused q + combine + fit splits"};
  for (int v = 0; v < 5; ++v) us[v] = graph_us_per_step(st, chain(v), kChain, at + " " + names[v]);
  std::printf("timing: attention %s, graph of %d steps, us per step: old (%s) %.2f; %s %.2f; %s %.2f; "
              "%s %.2f; %s %.2f (%d splits in use)\n",
              at.c_str(), kChain, names[0], us[0], names[1], us[1], names[2], us[2], names[3], us[3], names[4],
              us[4], used);
  // The fused kernel's other shapes: more heads per block, and the most splits.
  auto fused_chain = [&](int group, int splits) {
    return [&, group, splits](cudaStream_t s) -> Status {
      for (int i = 0; i < kChain; ++i) {
        AttentionLaunch a = d.launch(out_new.get(), ws_new.get());
        a.q_norm_rope = a.fold_combine = a.fit_splits = true;
        a.head_group = group;
        a.splits = splits;
        DS4_RETURN_IF_ERROR(launch_attention_decode(a, s));
      }
      return Status::Ok();
    };
  };
  const double g4 = graph_us_per_step(st, fused_chain(4, d.splits), kChain, at + " fused, groups of 4");
  const double g8 = graph_us_per_step(st, fused_chain(8, d.splits), kChain, at + " fused, groups of 8");
  const double s16 = graph_us_per_step(st, fused_chain(2, 16), kChain, at + " fused, 16 splits");
  std::printf("timing: attention %s, fused q + folded combine + fit splits, us per step: groups of 2 %.2f, "
              "groups of 4 %.2f, groups of 8 %.2f; groups of 2 with 16 splits %.2f\n",
              at.c_str(), us[3], g4, g8, s16);
  time_staged_attention(d, at, us[3], st);
  check(read_counters_nonzero(ws_new.get(), H) == 0, at + ": counters zero after the timed graphs");
}

void test_attention(std::mt19937& rng, cudaStream_t st) {
  const int max_ctx = 16384;
  std::vector<AttentionCase> cases;
  for (int ctx : {10, 4096, 16384}) {
    for (int ratio : {0, 4, 128}) {
      const int64_t max_comp = ratio ? max_ctx / ratio + 1 : 1;
      cases.push_back({"real ctx " + std::to_string(ctx), 64, 512, 128, ratio, ctx - 1, max_comp, 512, false, true});
    }
  }
  // A 64k-token sequence's ratio-128 layer (513 compressed rows stored) at 4k and 16k.
  for (int ctx : {4096, 16384}) {
    cases.push_back({"real ctx " + std::to_string(ctx) + " (64k sequence)", 64, 512, 128, 128, ctx - 1, 65536 / 128 + 1,
                     512, false, true});
  }
  // The MTP block's tagged window (ratio 0), real size.
  cases.push_back({"real tagged ring", 64, 512, 128, 0, 300, 1, 512, true, false});
  // Tiny shapes: the fixtures' 4 x 128 (window 16, top-k 8), partial head groups with the
  // scalar score path (20 x 192), positions before the window fills.
  for (int pos : {0, 5, 40, 213}) {
    for (int ratio : {0, 4, 16}) {
      cases.push_back({"tiny", 4, 128, 16, ratio, pos, 300 / (ratio ? ratio : 300) + 1, 8, false, false});
    }
  }
  cases.push_back({"tiny tagged ring", 4, 128, 16, 0, 40, 1, 8, true, false});
  for (int ratio : {0, 4, 128}) {
    cases.push_back({"partial groups", 20, 192, 128, ratio, 2300, 3000 / (ratio ? ratio : 3000) + 1, 512, false, false});
  }
  // Partial head groups the staged kernel takes (20 heads: groups of 8, 8 and 4), and a
  // tagged window of 256-dim rows.
  for (int ratio : {0, 4, 128}) {
    cases.push_back({"partial groups 128", 20, 128, 128, ratio, 2300, 3000 / (ratio ? ratio : 3000) + 1, 512, false, false});
  }
  cases.push_back({"tagged ring 256", 12, 256, 128, 0, 300, 1, 512, true, false});
  for (const AttentionCase& k : cases) check_attention_case(k, rng, st);
}

// Launches the fused path refuses, with a message naming the cause.
void test_attention_errors(std::mt19937& rng) {
  const AttentionCase k{"errors", 4, 128, 16, 0, 20, 1, 8, false, false};
  AttentionData d(k, rng);
  DeviceVec<float> out(4 * 128), ws(attention_workspace_floats(4, 16, 128));
  Status s;
  AttentionLaunch b = d.launch(out.get(), ws.get());
  b.q_norm_rope = true;
  b.q = d.dq.get() + 1;  // not 16-byte aligned
  s = launch_attention_decode(b, nullptr);
  check(!attention_folds_q_post(b) && !s.ok() && s.message().find("q norm") != std::string::npos,
        "misaligned q refused for the q post: " + s.message());
  AttentionLaunch c = d.launch(out.get(), ws.get());
  c.fold_combine = true;
  c.rope_dim = 63;
  s = launch_attention_decode(c, nullptr);
  check(!attention_fused_applies(c) && !s.ok() && s.message().find("rope_dim 63") != std::string::npos,
        "odd rope_dim refused by the fused kernel: " + s.message());
  check(cudaDeviceSynchronize() == cudaSuccess, "refused launches leave no error behind");
}

// ---------------------------------------------------------------- indexer select

struct IndexerCase {
  std::string name;
  int heads, head_dim, topk, pos;
  int64_t max_rows;  // index rows stored (the score buffer's and the select's bound)
  bool tie_rows;     // some rows repeat row 0 exactly (equal scores)
  bool time_it;
};

// The current indexer kernels against the previous ones (scores bit for bit, the same
// selection) and the CPU reference (scores within tolerance; the selection the CPU makes
// from the GPU's scores), every output NaN- or -1-filled first.
void check_indexer_case(const IndexerCase& k, std::mt19937& rng, cudaStream_t st) {
  const int H = k.heads, D = k.head_dim;
  const int nc = static_cast<int>(std::min<int64_t>((k.pos + 1) / 4, k.max_rows));
  const bool active = nc > k.topk;
  const std::string at = "indexer " + k.name + " (" + std::to_string(H) + " heads x " + std::to_string(D) + ", top " +
                         std::to_string(k.topk) + ", pos " + std::to_string(k.pos) + ", " + std::to_string(nc) +
                         " index rows, " + std::to_string(k.max_rows) + " stored)";
  std::vector<float> q = random_floats(static_cast<size_t>(H) * D, rng), w = random_floats(H, rng);
  std::vector<float> rows = random_floats(static_cast<size_t>(k.max_rows) * D, rng);
  if (k.tie_rows) {
    for (int64_t r = 10; r < k.max_rows; r += 37) std::copy(rows.begin(), rows.begin() + D, rows.begin() + r * D);
  }
  DeviceVec<float> dq(q), dw(w), drows(rows), dscores(k.max_rows);
  DeviceVec<int32_t> dpos(std::vector<int32_t>{k.pos}), dact(std::vector<int32_t>{active ? 1 : 0}), dsel(k.topk);
  IndexerLaunch ix;
  ix.q = dq.get();
  ix.weights = dw.get();
  ix.rows = drows.get();
  ix.max_rows = k.max_rows;
  ix.heads = H;
  ix.head_dim = D;
  ix.ratio = 4;
  ix.topk = k.topk;
  ix.pos = dpos.get();
  ix.active = dact.get();
  ix.scores = dscores.get();
  ix.selected = dsel.get();
  std::printf("%s: current scoring %s, shared-memory select %s\n", at.c_str(),
              indexer_current_scoring_applies(ix) ? "applies" : "does not apply",
              indexer_shared_select_applies(ix) ? "applies" : "does not apply");
  std::vector<float> scores_of[3];
  std::vector<int32_t> selected_of[3];
  for (int previous = 0; previous < 3; ++previous) {
    const std::string name =
        at + (previous == 1 ? " previous kernels" : previous == 2 ? " current scoring, previous select" : " current kernels");
    ix.previous_kernels = previous == 1;
    ix.previous_select = previous == 2;
    fill_nan(dscores.get(), k.max_rows);
    cudaMemset(dsel.get(), 0xff, sizeof(int32_t) * k.topk);
    const Status s = launch_indexer_select(ix, st);
    check(s.ok(), name + ": launch (" + s.message() + ")");
    check(cudaStreamSynchronize(st) == cudaSuccess, name + ": runs");
    scores_of[previous] = dscores.host();
    scores_of[previous].resize(nc);
    selected_of[previous] = dsel.host();
    if (!active) {
      // Gate closed: nothing written.
      int written = 0;
      for (int32_t v : selected_of[previous]) written += v != -1;
      check(written == 0, name + ": gate closed, no selection written");
      continue;
    }
    check(count_not_finite(scores_of[previous], name + " scores") == 0, name + ": every visible row scored");
  }
  if (!active) return;
  std::vector<float> ws(H), ref_scores(nc);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))) *
                      static_cast<float>(1.0 / std::sqrt(static_cast<double>(H)));
  for (int h = 0; h < H; ++h) ws[h] = w[h] * scale;
  cpu::indexer_scores(q.data(), ws.data(), H, D, rows.data(), nc, ref_scores.data());
  check(count_bad(scores_of[0], ref_scores, 1e-4, 1e-5, at + " scores vs cpu") == 0, at + ": scores match the CPU");
  check(count_bits_differ(scores_of[0], scores_of[1], at + " scores") == 0,
        at + ": scores bit for bit the previous kernels'");
  std::vector<int32_t> ref;
  cpu::select_top_k(scores_of[0].data(), nc, k.topk, &ref);
  const char* kernels[3] = {"current", "previous", "current scoring, previous select"};
  for (int v = 0; v < 3; ++v) {
    const std::vector<int32_t>& got = selected_of[v];
    int bad = 0;
    for (int i = 0; i < k.topk; ++i) {
      if (got[i] != ref[i] && bad++ < 3) {
        std::printf("  %s %s selection[%d]: got %d expected %d\n", at.c_str(), kernels[v], i, got[i], ref[i]);
      }
    }
    check(bad == 0, at + " " + kernels[v] + ": top-k in increasing order, ties to the lower index");
  }
  check(count_bits_differ(scores_of[2], scores_of[0], at + " scores (again)") == 0,
        at + ": the current scoring gives the same bits on a second launch");
  if (!k.time_it) return;
  // Columns: current kernels; previous kernels; current scoring with the previous select.
  double us[3];
  for (int variant = 0; variant < 3; ++variant) {
    ix.previous_kernels = variant == 1;
    ix.previous_select = variant == 2;
    const int previous = variant;
    us[variant] = graph_us_per_step(
        st,
        [&](cudaStream_t s) -> Status {
          for (int i = 0; i < kChain; ++i) DS4_RETURN_IF_ERROR(launch_indexer_select(ix, s));
          return Status::Ok();
        },
        kChain, at + (previous == 1 ? " previous" : previous == 2 ? " current scores, previous select" : " current"));
  }
  ix.previous_kernels = ix.previous_select = false;
  std::printf("timing: %s, graph of %d selects (scores + top-k), us per select: previous %.2f, current scoring + "
              "previous select %.2f, current %.2f\n",
              at.c_str(), kChain, us[1], us[2], us[0]);
  g_indexer_timings.push_back({at, {us[1], us[2], us[0]}});
}

void test_indexer(std::mt19937& rng, cudaStream_t st) {
  const std::vector<IndexerCase> cases = {
      // Real shapes: 64 heads x 128, top 512, index rows stored for 16k and 64k contexts.
      {"real ctx 4096", 64, 128, 512, 4095, 16384 / 4 + 1, true, true},
      {"real ctx 4096 (64k sequence)", 64, 128, 512, 4095, 65536 / 4 + 1, true, true},
      {"real ctx 16384", 64, 128, 512, 16383, 16384 / 4 + 1, true, true},
      {"real ctx 16384 (64k sequence)", 64, 128, 512, 16383, 65536 / 4 + 1, true, true},
      {"real ctx 2052 (first select)", 64, 128, 512, 2051, 16384 / 4 + 1, false, false},
      {"real ctx 2048 (gate closed)", 64, 128, 512, 2047, 16384 / 4 + 1, false, false},
      {"real ctx 65536", 64, 128, 512, 65535, 65536 / 4 + 1, true, false},
      // Beyond the select's shared memory (a 1M-token sequence): the previous select.
      {"real ctx 4096 (1M sequence)", 64, 128, 512, 4095, 1048576 / 4 + 1, true, false},
      // Fewer heads (16: two a warp), a head count the current scoring does not take (20).
      {"16 heads", 16, 128, 64, 1999, 600, true, false},
      {"16 heads, rows not a multiple of 8", 16, 128, 64, 4 * 517 + 2, 600, true, false},
      {"20 heads", 20, 128, 64, 1999, 600, true, false},
      {"8 heads, top 1", 8, 128, 1, 103, 100, false, false},
  };
  for (const IndexerCase& k : cases) check_indexer_case(k, rng, st);
}

void print_indexer_timing_table() {
  if (g_indexer_timings.empty()) return;
  std::printf("\ntiming table: indexer select (scores + top-k), graphs of %d chained selects, us per select\n", kChain);
  std::printf("| case | previous | current scoring, previous select | current |\n|---|---|---|---|\n");
  for (const TimingRow& r : g_indexer_timings) {
    std::printf("| %s | %.2f | %.2f | %.2f |\n", r.name.c_str(), r.us[0], r.us[1], r.us[2]);
  }
}

// ---------------------------------------------------------------- router

struct RouterCase {
  std::string name;
  int n_experts, n_used, n_tokens;
  bool bias, hash, ties, nans;
  bool time_it;
};

void check_router_case(const RouterCase& k, std::mt19937& rng, cudaStream_t st) {
  ModelConfig c = deepseek_v4_flash_config();
  c.n_experts = k.n_experts;
  c.n_experts_used = k.n_used;
  const int ne = k.n_experts, nu = k.n_used, T = k.n_tokens, vocab = 97;
  std::vector<float> logits = random_floats(static_cast<size_t>(T) * ne, rng, -4.0f, 4.0f);
  std::vector<float> bias = random_floats(ne, rng, -0.3f, 0.3f);
  if (k.ties) {
    for (int t = 0; t < T; ++t) for (int e = 0; e < ne; e += 3) logits[t * ne + e] = logits[t * ne];
    for (int e = 0; e < ne; e += 3) bias[e] = bias[0];
  }
  if (k.nans) {
    for (int t = 0; t < T; ++t) for (int e = 1; e < ne; e += 7) logits[t * ne + e] = NAN;
  }
  std::vector<int32_t> tid(static_cast<size_t>(nu) * vocab);
  for (size_t i = 0; i < tid.size(); ++i) tid[i] = static_cast<int32_t>((i * 7 + 3 * (i / nu)) % ne);
  std::vector<int32_t> tokens(T);
  for (int t = 0; t < T; ++t) tokens[t] = static_cast<int32_t>(rng() % vocab);
  DeviceVec<float> dl(logits), db(bias), dw_old(static_cast<size_t>(T) * nu), dw_new(static_cast<size_t>(T) * nu);
  DeviceVec<int32_t> dt(tid), dtok(tokens), dids_old(static_cast<size_t>(T) * nu), dids_new(static_cast<size_t>(T) * nu);
  RouterLaunch rl;
  rl.logits = dl.get();
  rl.n_experts = ne;
  rl.n_used = nu;
  rl.bias = k.bias ? db.get() : nullptr;
  rl.tid2eid = k.hash ? dt.get() : nullptr;
  rl.token = dtok.get();
  rl.route_scale = c.route_scale;
  rl.route_norm = c.route_norm;
  const std::string name = "router " + k.name + " (" + std::to_string(ne) + " experts, " + std::to_string(nu) +
                           " used, " + std::to_string(T) + " tokens)";
  RouterLaunch old_l = rl, new_l = rl;
  old_l.single_warp = true;
  old_l.ids = dids_old.get();
  old_l.weights = dw_old.get();
  new_l.ids = dids_new.get();
  new_l.weights = dw_new.get();
  fill_nan(dw_old.get(), static_cast<size_t>(T) * nu);
  fill_nan(dw_new.get(), static_cast<size_t>(T) * nu);
  cudaMemset(dids_old.get(), 0xff, sizeof(int32_t) * T * nu);
  cudaMemset(dids_new.get(), 0xff, sizeof(int32_t) * T * nu);
  check(launch_router(old_l, T, st).ok(), name + ": one-warp launch");
  check(launch_router(new_l, T, st).ok(), name + ": block-wide launch");
  check(cudaStreamSynchronize(st) == cudaSuccess, name + ": runs");
  const std::vector<int32_t> ids_old = dids_old.host(), ids_new = dids_new.host();
  const std::vector<float> w_old = dw_old.host(), w_new = dw_new.host();
  int id_diff = 0;
  for (size_t i = 0; i < ids_old.size(); ++i) {
    if (ids_old[i] != ids_new[i] && id_diff++ < 3) {
      std::printf("  %s: token %zu slot %zu: ids new %d old %d\n", name.c_str(), i / nu, i % nu, ids_new[i],
                  ids_old[i]);
    }
  }
  check(id_diff == 0, name + ": the same experts in the same order as the one-warp kernel");
  check(count_not_finite(w_new, name + " weights") == 0, name + ": every weight written");
  check(count_bits_differ(w_new, w_old, name + " weights") == 0, name + ": weights bit-identical to the one-warp kernel");
  if (!k.nans) {
    // The CPU reference (hash layers: tid2eid order; others: descending biased score).
    GgufTensor tb_t, tt_t;
    tb_t.name = "exp_probs_b";
    tb_t.type = GgmlType::F32;
    tb_t.ne = {ne};
    tb_t.data = reinterpret_cast<const uint8_t*>(bias.data());
    tt_t.name = "ffn_gate_tid2eid";
    tt_t.type = GgmlType::I32;
    tt_t.ne = {nu, vocab};
    tt_t.data = reinterpret_cast<const uint8_t*>(tid.data());
    LayerWeights lw;
    lw.hash = k.hash;
    if (k.hash) lw.ffn_gate_tid2eid.tensor = &tt_t;
    if (k.bias && !k.hash) lw.exp_probs_b.tensor = &tb_t;
    int bad = 0;
    for (int t = 0; t < T; ++t) {
      std::vector<int32_t> ids(nu);
      std::vector<float> w(nu);
      cpu::route_token(c, lw, logits.data() + static_cast<size_t>(t) * ne, tokens[t], ids.data(), w.data());
      for (int i = 0; i < nu; ++i) {
        const size_t at = static_cast<size_t>(t) * nu + i;
        const bool ok = ids[i] == ids_new[at] && std::fabs(w[i] - w_new[at]) <= 1e-6f * std::fabs(w[i]) + 1e-7f;
        if (!ok && bad++ < 3) {
          std::printf("  %s: token %d slot %d: gpu expert %d weight %.9g, cpu expert %d weight %.9g\n", name.c_str(),
                      t, i, ids_new[at], w_new[at], ids[i], w[i]);
        }
      }
    }
    check(bad == 0, name + ": experts (in order) and weights match the CPU reference");
  }
  if (!k.time_it) return;
  auto chain = [&](const RouterLaunch& l) {
    return [&, l](cudaStream_t s) -> Status {
      for (int i = 0; i < kChain; ++i) DS4_RETURN_IF_ERROR(launch_router(l, T, s));
      return Status::Ok();
    };
  };
  const double us_old = graph_us_per_step(st, chain(old_l), kChain, name + " one warp");
  const double us_new = graph_us_per_step(st, chain(new_l), kChain, name + " block-wide");
  std::printf("timing: %s, graph of %d launches, us per launch: one warp %.2f, block-wide %.2f\n", name.c_str(),
              kChain, us_old, us_new);
}

void test_router(std::mt19937& rng, cudaStream_t st) {
  const std::vector<RouterCase> cases = {
      {"real top-k with bias", 256, 6, 1, true, false, false, false, true},
      {"real top-k without bias", 256, 6, 1, false, false, false, false, false},
      {"real hash", 256, 6, 1, false, true, false, false, true},
      {"real top-k ties", 256, 6, 1, true, false, true, false, false},
      {"real top-k ties without bias", 256, 6, 1, false, false, true, false, false},
      {"real top-k NaN logits", 256, 6, 1, true, false, false, true, false},
      {"real top-k, 5 tokens", 256, 6, 5, true, false, false, false, false},
      {"real hash, 5 tokens", 256, 6, 5, false, true, false, false, false},
      {"tiny top-k", 8, 6, 3, true, false, false, false, false},
      {"tiny hash", 8, 6, 3, false, true, false, false, false},
      {"tiny ties", 8, 6, 2, true, false, true, false, false},
      {"64 experts", 64, 6, 4, true, false, false, false, false},
      {"40 experts, 16 used", 40, 16, 3, true, false, false, false, false},
      {"1000 experts, 16 used", 1000, 16, 2, true, false, true, false, false},
  };
  for (int trial = 0; trial < 5; ++trial) {
    for (const RouterCase& k : cases) {
      RouterCase kk = k;
      kk.time_it = k.time_it && trial == 0;
      check_router_case(kk, rng, st);
    }
  }
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  std::printf("PDL %s\n", pdl_enabled() ? "on" : "off");
  std::mt19937 rng(20261129);
  cudaStream_t st;
  cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  test_router(rng, st);
  test_attention_errors(rng);
  test_attention(rng, st);
  test_indexer(rng, st);
  print_timing_table();
  print_indexer_timing_table();
  cudaStreamDestroy(st);
  return finish("decode_path_test");
}
