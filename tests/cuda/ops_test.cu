// The forward pass's small GPU ops against the CPU reference (engine/cpu/*) on fresh
// random inputs, every output element compared: row post-processing (RMSNorm, RoPE,
// FP8 round trip, Hadamard + FP4 round trip), hyper-connections (hc_pre with Sinkhorn,
// hc_post, hc_head), the MoE router (biased top-k and hash routing), decode attention
// with sinks over raw and compressed rows (head-group and per-head kernels), the
// indexer's scores and top-k selection (current and earlier kernels), and the greedy
// argmax; and hc_post fused with the next mixing projection's column tiles
// (launch_hc_post_mix) against the separate launches it replaces, bit for bit; the
// cluster hc_pre / hc_head kernels (every cluster size, both Sinkhorns) against the
// single-block kernel within 1e-6 relative. Prints "timing:" lines for decode attention
// and the indexer at real sizes, and for 40-step CUDA graph chains of the fused and
// unfused HC launches and of each hc_pre kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <set>

#include "cpu/attention.h"
#include "cpu/hyper_connections.h"
#include "cpu/indexer.h"
#include "cpu/moe.h"
#include "cpu/qat.h"
#include "cpu/rope.h"
#include "cpu/vector_ops.h"
#include "cuda/attention.h"
#include "cuda/column_tile.cuh"
#include "cuda/compressor_indexer.h"
#include "cuda/cuda_check.h"
#include "cuda/device_model.h"
#include "cuda/hyper_connections.h"
#include "cuda/launch.h"
#include "cuda/matvec.h"
#include "cuda/moe.h"
#include "cuda/row_ops.h"
#include "cuda/sampling.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

ModelConfig small_config() {
  ModelConfig c = deepseek_v4_flash_config();
  c.dim = 256;
  c.n_heads = 8;
  c.head_dim = 512;
  c.n_experts = 64;
  c.n_experts_used = 6;
  c.vocab = 50;
  return c;
}

// A Weight over caller-owned bytes (the CPU routines take Weights).
struct FakeTensor {
  GgufTensor t;
  Weight w;
  FakeTensor(GgmlType type, std::vector<int64_t> ne, const void* data) {
    t.name = "test";
    t.type = type;
    t.ne = std::move(ne);
    t.data = static_cast<const uint8_t*>(data);
    w.tensor = &t;
  }
};

int count_bad(const std::vector<float>& gpu, const std::vector<float>& cpu, double rel, double abs_tol,
              const std::string& what) {
  int bad = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (!(std::fabs(gpu[i] - cpu[i]) <= rel * std::fabs(cpu[i]) + abs_tol)) {
      if (bad++ < 3) std::printf("  %s[%zu]: gpu %.8g cpu %.8g\n", what.c_str(), i, gpu[i], cpu[i]);
    }
  }
  return bad;
}

void test_row_post(std::mt19937& rng) {
  const ModelConfig c = small_config();
  const int d = 512, rows = 6, pos = 70001;
  std::vector<float> x = random_floats(rows * d, rng, -3.0f, 3.0f);
  std::vector<float> w = random_floats(d, rng, 0.5f, 1.5f);
  const cpu::Rope rope(c, true);
  DeviceVec<float> dfreq(rope.freqs()), dw(w), dx(x), dy(rows * d);
  DeviceVec<int32_t> dpos(std::vector<int32_t>{pos});
  // Norm + RoPE (no QAT): close in f32.
  RowPostLaunch l;
  l.in = dx.get();
  l.in_stride = l.out_stride = d;
  l.out = dy.get();
  l.n_rows = rows;
  l.d = d;
  l.norm = true;
  l.norm_weight = dw.get();
  l.rope_dim = c.rope_dim;
  l.rope_freqs = dfreq.get();
  l.pos = dpos.get();
  check(launch_row_post(l, nullptr).ok(), "row_post launch");
  std::vector<float> ref(rows * d);
  for (int r = 0; r < rows; ++r) {
    cpu::rms_norm(x.data() + r * d, w.data(), d, c.norm_eps, ref.data() + r * d);
    rope.rotate(ref.data() + r * d + d - c.rope_dim, pos);
  }
  check(count_bad(dy.host(), ref, 2e-5, 1e-6, "norm+rope") == 0, "row_post: RMSNorm + RoPE match");
  // Inverse RoPE undoes the rotation.
  RowPostLaunch inv = l;
  inv.in = dy.get();
  inv.norm = false;
  inv.inverse = true;
  DeviceVec<float> dz(rows * d);
  inv.out = dz.get();
  check(launch_row_post(inv, nullptr).ok(), "row_post inverse launch");
  std::vector<float> back(rows * d);
  for (int r = 0; r < rows; ++r) cpu::rms_norm(x.data() + r * d, w.data(), d, c.norm_eps, back.data() + r * d);
  check(count_bad(dz.host(), back, 1e-4, 1e-5, "inverse rope") == 0, "row_post: inverse RoPE restores");
  // FP8 alone: bit-exact against the CPU round trip.
  RowPostLaunch f8 = l;
  f8.norm = false;
  f8.rope_dim = 64;
  f8.rope_freqs = dfreq.get();
  f8.qat = RowQat::kFp8Nope;
  f8.inverse = false;
  f8.in = dx.get();
  f8.out = dy.get();
  // Scale rows over many binades so subnormal and saturating blocks occur.
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < d; ++i) x[r * d + i] *= std::ldexp(1.0f, 6 * r - 18) * (i % 64 == 5 ? 40.0f : 1.0f);
  cudaMemcpy(dx.get(), x.data(), sizeof(float) * x.size(), cudaMemcpyHostToDevice);
  check(launch_row_post(f8, nullptr).ok(), "fp8 launch");
  for (int r = 0; r < rows; ++r) {
    std::copy(x.begin() + r * d, x.begin() + (r + 1) * d, ref.begin() + r * d);
    rope.rotate(ref.data() + r * d + d - 64, pos);
    cpu::fp8_roundtrip(ref.data() + r * d, d - 64);
  }
  {
    // The no-rope part is bit-exact; the rotated tail is f32 arithmetic.
    std::vector<float> got = dy.host(), nope_g, nope_c, tail_g, tail_c;
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < d; ++i) {
        const bool nope = i < d - 64;
        (nope ? nope_g : tail_g).push_back(got[r * d + i]);
        (nope ? nope_c : tail_c).push_back(ref[r * d + i]);
      }
    }
    check(count_bad(nope_g, nope_c, 0.0, 0.0, "fp8") == 0, "row_post: FP8 round trip bit-exact");
    check(count_bad(tail_g, tail_c, 1e-6, 0.0, "fp8 tail") == 0, "row_post: RoPE tail beside FP8");
  }
  // Hadamard + FP4 on 128-wide rows: bit-exact.
  const int di = 128;
  std::vector<float> xi = random_floats(rows * di, rng, -2.0f, 2.0f);
  DeviceVec<float> dxi(xi), dyi(rows * di);
  RowPostLaunch f4;
  f4.in = dxi.get();
  f4.out = dyi.get();
  f4.in_stride = f4.out_stride = di;
  f4.n_rows = rows;
  f4.d = di;
  f4.qat = RowQat::kHadamardFp4;
  check(launch_row_post(f4, nullptr).ok(), "fp4 launch");
  std::vector<float> refi = xi;
  for (int r = 0; r < rows; ++r) {
    cpu::hadamard(refi.data() + r * di, di);
    cpu::fp4_roundtrip(refi.data() + r * di, di);
  }
  check(count_bad(dyi.host(), refi, 0.0, 0.0, "hadamard+fp4") == 0, "row_post: Hadamard + FP4 bit-exact");
}

// hc_pre, hc_post and hc_head against the CPU reference at `dim` (the default kernels:
// the cluster form where it applies, see hc_pre_cluster_size).
void test_hyper_connections(std::mt19937& rng, int dim_in) {
  ModelConfig c = small_config();
  c.dim = dim_in;
  const int hc = c.hc_mult, dim = c.dim, mix = c.hc_mix();
  std::vector<float> x = random_floats(hc * dim, rng, -2.0f, 2.0f);
  std::vector<uint8_t> fn = random_blocks(GgmlType::F16, mix, hc * dim, rng);
  std::vector<float> scale = {0.7f, 1.3f, 2.1f}, base = random_floats(mix, rng, -0.5f, 0.5f);
  std::vector<float> norm_w = random_floats(dim, rng, 0.5f, 1.5f);
  FakeTensor tfn(GgmlType::F16, {hc * dim, mix}, fn.data()), tsc(GgmlType::F32, {3}, scale.data()),
      tb(GgmlType::F32, {mix}, base.data());
  auto dfn = upload_matrix(GgmlType::F16, hc * dim, mix, 1, fn.data());
  check(dfn.ok(), "hc fn upload");
  if (!dfn.ok()) return;
  DeviceVec<float> dx(x), dmix(mix), dsc(scale), db(base), dnw(norm_w), dpost(hc), dcomb(hc * hc), dout(dim);
  MatvecLaunch ml;
  ml.w = &(*dfn)->m;
  ml.x = dx.get();
  ml.y = dmix.get();
  check(launch_matvec(ml, nullptr).ok(), "hc mix launch");
  const HcShape s{dim, hc, c.hc_sinkhorn_iters, c.hc_eps, c.norm_eps};
  const int cluster = hc_pre_cluster_size(s, {}, dx.get(), dout.get());
  const std::string tag = " (dim " + std::to_string(dim) + ")";
  std::printf("hyper-connections vs CPU: dim %d, hc_pre kernel: %s\n", dim,
              cluster ? ("cluster of " + std::to_string(cluster)).c_str() : "single block");
  check(launch_hc_pre(dx.get(), dmix.get(), dsc.get(), db.get(), dnw.get(), s, dpost.get(), dcomb.get(),
                      dout.get(), nullptr).ok(), "hc_pre launch");
  std::vector<float> y(dim), yn(dim), scratch(hc * dim);
  cpu::HcMix m;
  cpu::hc_pre(c, x.data(), tfn.w, nullptr, tsc.w, tb.w, y.data(), &m, scratch.data());
  cpu::rms_norm(y.data(), norm_w.data(), dim, c.norm_eps, yn.data());
  check(count_bad(dout.host(), yn, 1e-4, 1e-5, "hc_pre out") == 0, "hc_pre: sublayer input matches" + tag);
  check(count_bad(dpost.host(), std::vector<float>(m.post, m.post + hc), 1e-4, 1e-6, "post") == 0,
        "hc_pre: post weights match" + tag);
  std::vector<float> comb(m.comb, m.comb + hc * hc);
  check(count_bad(dcomb.host(), comb, 1e-4, 1e-6, "comb") == 0, "hc_pre: Sinkhorn comb matches" + tag);
  // hc_post with the CPU's mix on both sides.
  std::vector<float> f = random_floats(dim, rng);
  DeviceVec<float> df(f), dxo(hc * dim), dpost2(std::vector<float>(m.post, m.post + hc)), dcomb2(comb);
  check(launch_hc_post(dx.get(), df.get(), dpost2.get(), dcomb2.get(), s, dxo.get(), nullptr).ok(), "hc_post launch");
  std::vector<float> xo(hc * dim);
  cpu::hc_post(c, f.data(), x.data(), m, xo.data());
  check(count_bad(dxo.host(), xo, 1e-5, 1e-6, "hc_post") == 0, "hc_post matches" + tag);
  // hc_head.
  std::vector<uint8_t> hfn = random_blocks(GgmlType::F16, hc, hc * dim, rng);
  std::vector<float> hscale = {0.9f}, hbase = random_floats(hc, rng, -0.5f, 0.5f);
  FakeTensor thfn(GgmlType::F16, {hc * dim, hc}, hfn.data()), ths(GgmlType::F32, {1}, hscale.data()),
      thb(GgmlType::F32, {hc}, hbase.data());
  auto dhfn = upload_matrix(GgmlType::F16, hc * dim, hc, 1, hfn.data());
  DeviceVec<float> dhs(hscale), dhb(hbase), dhead(dim);
  ml.w = &(*dhfn)->m;
  check(launch_matvec(ml, nullptr).ok(), "hc_head mix launch");
  check(launch_hc_head(dx.get(), dmix.get(), dhs.get(), dhb.get(), dnw.get(), s, dhead.get(), nullptr).ok(),
        "hc_head launch");
  std::vector<float> hy(dim), hyn(dim);
  cpu::hc_head(c, x.data(), thfn.w, nullptr, ths.w, thb.w, hy.data(), scratch.data());
  cpu::rms_norm(hy.data(), norm_w.data(), dim, c.norm_eps, hyn.data());
  check(count_bad(dhead.host(), hyn, 1e-4, 1e-5, "hc_head") == 0, "hc_head matches" + tag);
}

void test_router(std::mt19937& rng) {
  const ModelConfig c = small_config();
  const int ne = c.n_experts, k = c.n_experts_used;
  for (int hash = 0; hash < 2; ++hash) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> logits = random_floats(ne, rng, -4.0f, 4.0f);
      if (trial % 5 == 0) for (int e = 0; e < ne; e += 3) logits[e] = logits[0];  // exact ties
      std::vector<float> bias = random_floats(ne, rng, -0.2f, 0.2f);
      if (trial % 5 == 0) std::fill(bias.begin(), bias.end(), 0.0f);
      std::vector<int32_t> tid(static_cast<size_t>(k) * c.vocab);
      for (size_t i = 0; i < tid.size(); ++i) tid[i] = static_cast<int32_t>((i * 7 + trial) % ne);
      const int32_t token = trial % c.vocab;
      FakeTensor tb(GgmlType::F32, {ne}, bias.data()), tt(GgmlType::I32, {k, c.vocab}, tid.data());
      LayerWeights lw;
      lw.hash = hash;
      if (hash) lw.ffn_gate_tid2eid = tt.w; else lw.exp_probs_b = tb.w;
      std::vector<int32_t> ids(k);
      std::vector<float> wts(k);
      cpu::route_token(c, lw, logits.data(), token, ids.data(), wts.data());
      DeviceVec<float> dl(logits), db(bias), dw(k);
      DeviceVec<int32_t> dt(tid), dtok(std::vector<int32_t>{token}), dids(k);
      RouterLaunch rl;
      rl.logits = dl.get();
      rl.n_experts = ne;
      rl.n_used = k;
      rl.bias = hash ? nullptr : db.get();
      rl.tid2eid = hash ? dt.get() : nullptr;
      rl.token = dtok.get();
      rl.route_scale = c.route_scale;
      rl.route_norm = c.route_norm;
      rl.ids = dids.get();
      rl.weights = dw.get();
      check(launch_router(rl, nullptr).ok(), "router launch");
      std::vector<int32_t> gids = dids.host();
      std::vector<float> gw = dw.host();
      bool same = true;
      for (int i = 0; i < k; ++i) {
        int j = static_cast<int>(std::find(ids.begin(), ids.end(), gids[i]) - ids.begin());
        if (j == k || std::fabs(gw[i] - wts[j]) > 1e-5f * std::fabs(wts[j]) + 1e-7f) same = false;
      }
      check(same, std::string("router ") + (hash ? "hash" : "top-k") + " trial " + std::to_string(trial) +
                      ": same experts (as sets) and weights");
    }
  }
}

// Microseconds per call of `launch` (after warm-up calls), timed with events.
template <typename Launch>
double time_us(Launch launch, int reps = 50) {
  for (int i = 0; i < 3; ++i) launch();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i) launch();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0.0f;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1000.0 * ms / reps;
}

// Host reference of decode attention: every head over the rows the launch sees.
std::vector<float> attention_reference(const ModelConfig& c, const cpu::Rope& rope, int H, int D, int pos,
                                       const std::vector<float>& q, const std::vector<const float*>& rows,
                                       const std::vector<float>& sinks) {
  std::vector<float> ref(static_cast<size_t>(H) * D), scores(rows.size());
  for (int h = 0; h < H; ++h) {
    cpu::attend_head(q.data() + static_cast<size_t>(h) * D, rows.data(), static_cast<int64_t>(rows.size()), D,
                     sinks[h], 1.0f / std::sqrt(static_cast<float>(D)), ref.data() + static_cast<size_t>(h) * D,
                     scores.data());
    rope.rotate(ref.data() + static_cast<size_t>(h) * D + D - c.rope_dim, pos, true);
  }
  return ref;
}

// Both decode attention kernels (head groups, and the per-head blocks) against the CPU
// reference: raw only, ratio 4 with and without the indexer's selection, ratio 128;
// head counts that fill the groups and one that leaves a partial group; 512 dims (the
// vector score path) and 192 (the scalar one); one split and several.
void test_attention(std::mt19937& rng) {
  ModelConfig c = small_config();
  const int window = 128, ring = window + 16;
  // (heads, head_dim): full and partial head groups; 192 dims take the scalar score path.
  const std::pair<int, int> shapes[] = {{8, 512}, {20, 512}, {8, 192}};
  for (const auto& [H, D] : shapes) {
    for (int ratio : {0, 4, 128}) {
      for (int pos : {0, 57, 1000, 2300}) {
        const int64_t max_comp = 3000 / (ratio ? ratio : 1) + 1;
        const int topk = 512;
        std::vector<float> q = random_floats(H * D, rng, -0.2f, 0.2f);
        std::vector<float> raw = random_floats(static_cast<size_t>(ring) * D, rng);
        std::vector<float> comp = random_floats(static_cast<size_t>(max_comp) * D, rng);
        std::vector<float> sinks = random_floats(H, rng, -1.0f, 2.0f);
        const int nc = ratio ? (pos + 1) / ratio : 0;
        const bool active = ratio == 4 && nc > topk;
        std::vector<int32_t> sel;
        if (active) {
          for (int i = 0; i < nc && static_cast<int>(sel.size()) < topk; i += 1) if (rng() % 3) sel.push_back(i);
          for (int i = 0; static_cast<int>(sel.size()) < topk; ++i) sel.push_back(i);
        }
        if (sel.empty()) sel.push_back(0);
        DeviceVec<float> dq(q), draw(raw), dcomp(comp), dsink(sinks), dout(H * D);
        const cpu::Rope rope(c, ratio != 0);
        DeviceVec<float> dfreq(rope.freqs());
        DeviceVec<int32_t> dsel(sel), dact(std::vector<int32_t>{active ? 1 : 0}), dpos(std::vector<int32_t>{pos});
        AttentionLaunch a;
        a.q = dq.get();
        a.out = dout.get();
        a.raw = draw.get();
        a.ring = ring;
        a.window = window;
        a.comp = dcomp.get();
        a.max_comp_rows = max_comp;
        a.ratio = ratio;
        a.topk = topk;
        a.selected = dsel.get();
        a.active = dact.get();
        a.sinks = dsink.get();
        a.heads = H;
        a.head_dim = D;
        a.rope_dim = c.rope_dim;
        a.rope_freqs = dfreq.get();
        a.pos = dpos.get();
        a.max_visible = window + (ratio == 4 ? topk : ratio ? static_cast<int>(max_comp) : 0);
        a.splits = pos % 2 ? 1 : 7;  // single block and split rows
        DeviceVec<float> dws(attention_workspace_floats(H, a.splits, D));
        a.workspace = dws.get();
        std::vector<const float*> rows;
        const int nraw = std::min(pos + 1, window);
        for (int r = 0; r < nraw; ++r) rows.push_back(raw.data() + static_cast<size_t>((pos - nraw + 1 + r) % ring) * D);
        if (ratio == 4 && active) for (int32_t s : sel) rows.push_back(comp.data() + static_cast<size_t>(s) * D);
        else for (int i = 0; i < nc; ++i) rows.push_back(comp.data() + static_cast<size_t>(i) * D);
        const std::vector<float> ref = attention_reference(c, rope, H, D, pos, q, rows, sinks);
        for (int group : {2, 4, 8, 0, 1}) {  // 1: the per-head kernel; 0: the launcher's choice
          const bool per_head = group == 1;
          a.per_head_blocks = per_head;
          a.head_group = per_head ? 0 : group;
          const std::string name = (per_head ? std::string("per-head") : "head-group " + std::to_string(group)) +
                                   " attention heads " + std::to_string(H) + " x " + std::to_string(D) +
                                   " ratio " + std::to_string(ratio) +
                                   " pos " + std::to_string(pos) + " splits " + std::to_string(a.splits);
          check(attention_uses_head_groups(a) == !per_head, name + ": runs the kernel asked for");
          if (group > 1) check(attention_head_group(a) == group, name + ": with the group size asked for");
          cudaMemset(dout.get(), 0, sizeof(float) * H * D);
          check(launch_attention_decode(a, nullptr).ok(), name + ": launch");
          check(cudaDeviceSynchronize() == cudaSuccess, name + ": runs");
          check(count_bad(dout.host(), ref, 1e-4, 2e-6, name) == 0, name + ": matches the CPU reference");
        }
      }
    }
  }
}

// The real decode sizes (64 heads x 512 dims, window 128): ratio 4 with 512 selected
// compressed rows and ratio 128 with 128 visible compressed rows. Each kernel is checked
// against the CPU reference, then timed; splits as the forward pass picks them
// (max_visible / 64, at most 16) and 16.
void bench_attention(std::mt19937& rng) {
  ModelConfig c = deepseek_v4_flash_config();
  const int H = 64, D = 512, window = 128, ring = window + 16, topk = 512;
  struct Case {
    int ratio, pos;
    int64_t max_comp;
    const char* what;
  };
  const Case cases[] = {{4, 4095, 16384, "ratio 4, 128 raw + 512 selected rows (ctx 4096)"},
                        {128, 128 * 128 - 1, 512, "ratio 128, 128 raw + 128 compressed rows (ctx 16384)"}};
  for (const Case& k : cases) {
    std::vector<float> q = random_floats(H * D, rng, -0.2f, 0.2f);
    std::vector<float> raw = random_floats(static_cast<size_t>(ring) * D, rng);
    std::vector<float> comp = random_floats(static_cast<size_t>(k.max_comp) * D, rng);
    std::vector<float> sinks = random_floats(H, rng, -1.0f, 2.0f);
    const int nc = (k.pos + 1) / k.ratio;
    const bool active = k.ratio == 4 && nc > topk;
    std::vector<int32_t> sel = {0};  // ratio 128: unused
    if (active) {
      // About half the rows, spread over the context, then the last rows to fill up.
      std::vector<char> picked(nc, 0);
      sel.clear();
      for (int i = 0; i < nc && static_cast<int>(sel.size()) < topk; ++i) {
        if (rng() % 2) {
          sel.push_back(i);
          picked[i] = 1;
        }
      }
      for (int i = nc - 1; static_cast<int>(sel.size()) < topk; --i) if (!picked[i]) sel.push_back(i);
      std::sort(sel.begin(), sel.end());
    }
    const cpu::Rope rope(c, true);
    DeviceVec<float> dq(q), draw(raw), dcomp(comp), dsink(sinks), dout(H * D), dfreq(rope.freqs());
    DeviceVec<int32_t> dsel(sel), dact(std::vector<int32_t>{active ? 1 : 0}), dpos(std::vector<int32_t>{k.pos});
    DeviceVec<float> dws(attention_workspace_floats(H, 16, D));
    AttentionLaunch a;
    a.q = dq.get();
    a.out = dout.get();
    a.raw = draw.get();
    a.ring = ring;
    a.window = window;
    a.comp = dcomp.get();
    a.max_comp_rows = k.max_comp;
    a.ratio = k.ratio;
    a.topk = topk;
    a.selected = dsel.get();
    a.active = dact.get();
    a.sinks = dsink.get();
    a.heads = H;
    a.head_dim = D;
    a.rope_dim = c.rope_dim;
    a.rope_freqs = dfreq.get();
    a.pos = dpos.get();
    a.max_visible = window + (k.ratio == 4 ? topk : static_cast<int>(k.max_comp));
    a.workspace = dws.get();
    std::vector<const float*> rows;
    for (int r = 0; r < window; ++r) rows.push_back(raw.data() + static_cast<size_t>((k.pos - window + 1 + r) % ring) * D);
    if (active) for (int32_t s : sel) rows.push_back(comp.data() + static_cast<size_t>(s) * D);
    else for (int i = 0; i < nc; ++i) rows.push_back(comp.data() + static_cast<size_t>(i) * D);
    const std::vector<float> ref = attention_reference(c, rope, H, D, k.pos, q, rows, sinks);
    const int forward_splits = std::clamp(a.max_visible / 64, 1, 16);
    for (int splits : {forward_splits, 16}) {
      a.splits = splits;
      const int groups[] = {1, 0, 8, 4, 2};  // 1: per-head kernel; 0: the launcher's choice
      double us[5] = {};
      for (int v = 0; v < 5; ++v) {
        const bool per_head = groups[v] == 1;
        a.per_head_blocks = per_head;
        a.head_group = per_head ? 0 : groups[v];
        const std::string name = (per_head ? std::string("per-head") : "head-group " + std::to_string(groups[v])) +
                                 " attention, " + k.what + ", splits " + std::to_string(splits);
        check(attention_uses_head_groups(a) == !per_head, name + ": runs the kernel asked for");
        cudaMemset(dout.get(), 0, sizeof(float) * H * D);
        check(launch_attention_decode(a, nullptr).ok(), name + ": launch");
        check(cudaDeviceSynchronize() == cudaSuccess, name + ": runs");
        check(count_bad(dout.host(), ref, 1e-4, 2e-6, name) == 0, name + ": matches the CPU reference");
        us[v] = time_us([&] { (void)launch_attention_decode(a, nullptr); });
      }
      a.head_group = 0;
      a.per_head_blocks = false;
      std::printf("timing: decode attention 64 heads x 512, %s, splits %d: per-head %.1f us; head groups: "
                  "auto (%d) %.1f us, 8 %.1f us, 4 %.1f us, 2 %.1f us\n",
                  k.what, splits, us[0], attention_head_group(a), us[1], us[2], us[3], us[4]);
    }
  }
}

// The indexer's scores and selection, with the current kernels and the earlier ones:
// scores bit for bit equal between them and within tolerance of the CPU's, selections
// equal to each other and to the CPU's selection from the same scores.
void check_indexer_case(std::mt19937& rng, int heads, int hd, int topk, int pos, int64_t max_rows, bool tie_rows,
                        bool time_it) {
  const std::string at = " (heads " + std::to_string(heads) + ", top " + std::to_string(topk) + ", pos " +
                         std::to_string(pos) + ")";
  std::vector<float> q = random_floats(heads * hd, rng), w = random_floats(heads, rng);
  std::vector<float> rows = random_floats(max_rows * hd, rng);
  if (tie_rows) {
    for (int r = 10; r < max_rows; r += 37) std::copy(rows.begin(), rows.begin() + hd, rows.begin() + r * hd);
  }
  DeviceVec<float> dq(q), dw(w), drows(rows), dscores(max_rows);
  DeviceVec<int32_t> dpos(std::vector<int32_t>{pos}), dact(1), dsel(topk);
  check(launch_indexer_gate(dpos.get(), 4, topk, dact.get(), nullptr).ok(), "indexer gate launch" + at);
  IndexerLaunch ix;
  ix.q = dq.get();
  ix.weights = dw.get();
  ix.rows = drows.get();
  ix.max_rows = max_rows;
  ix.heads = heads;
  ix.head_dim = hd;
  ix.ratio = 4;
  ix.topk = topk;
  ix.pos = dpos.get();
  ix.active = dact.get();
  ix.scores = dscores.get();
  ix.selected = dsel.get();
  const int nc = std::min<int>((pos + 1) / 4, static_cast<int>(max_rows));
  const bool active = nc > topk;
  std::vector<float> scores_of[2];
  std::vector<int32_t> selected_of[2];
  double us[2] = {0.0, 0.0};
  for (int baseline = 0; baseline < 2; ++baseline) {
    const std::string name = std::string(baseline ? "baseline" : "current") + " indexer" + at;
    ix.baseline_kernels = baseline != 0;
    cudaMemset(dscores.get(), 0, sizeof(float) * max_rows);
    cudaMemset(dsel.get(), 0xff, sizeof(int32_t) * topk);
    check(launch_indexer_select(ix, nullptr).ok(), name + ": launch");
    check(cudaDeviceSynchronize() == cudaSuccess, name + ": runs");
    check(dact.host()[0] == (active ? 1 : 0), name + ": gate flag");
    scores_of[baseline] = dscores.host();
    scores_of[baseline].resize(nc);
    selected_of[baseline] = dsel.host();
    if (time_it) us[baseline] = time_us([&] { (void)launch_indexer_select(ix, nullptr); });
  }
  if (time_it) {
    std::printf("timing: indexer select %d heads x %d, %d index rows (ctx %d), top %d: baseline %.1f us, current %.1f us\n",
                heads, hd, nc, pos + 1, topk, us[1], us[0]);
  }
  if (!active) return;
  std::vector<float> ws(heads), scores(nc);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))) *
                      static_cast<float>(1.0 / std::sqrt(static_cast<double>(heads)));
  for (int h = 0; h < heads; ++h) ws[h] = w[h] * scale;
  cpu::indexer_scores(q.data(), ws.data(), heads, hd, rows.data(), nc, scores.data());
  check(count_bad(scores_of[0], scores, 1e-4, 1e-5, "index scores") == 0, "indexer scores" + at);
  int differ = 0;
  for (int i = 0; i < nc; ++i) {
    if (std::memcmp(&scores_of[0][i], &scores_of[1][i], sizeof(float)) != 0 && differ++ < 3) {
      std::printf("  score[%d]: current %.9g baseline %.9g\n", i, scores_of[0][i], scores_of[1][i]);
    }
  }
  check(differ == 0, "indexer scores bit for bit equal to the baseline kernel's" + at);
  // Select from the GPU's own scores so the comparison tests the selection only.
  std::vector<int32_t> ref;
  cpu::select_top_k(scores_of[0].data(), nc, topk, &ref);
  for (int v = 0; v < 2; ++v) {
    const std::vector<int32_t>& got = selected_of[v];
    int first_bad = -1;
    for (int i = 0; i < topk && first_bad < 0; ++i) if (got[i] != ref[i]) first_bad = i;
    if (first_bad >= 0) {
      std::printf("  %s selection[%d]: got %d expected %d\n", v ? "baseline" : "current", first_bad,
                  got[first_bad], ref[first_bad]);
    }
    check(first_bad < 0, std::string(v ? "baseline" : "current") +
                             " indexer top-k (ascending, ties to lower index)" + at);
  }
}

// A selection where many scores tie exactly at the boundary (and the boundary bin is
// reached only at the last radix pass), checked against the CPU's selection.
void check_topk_ties(std::mt19937& rng) {
  const int topk = 64, pos = 4 * 700 - 1, nc = 700;
  // Rows from a few distinct patterns so scores repeat exactly.
  const int heads = 4, hd = 128;
  std::vector<float> q = random_floats(heads * hd, rng), w = random_floats(heads, rng, 0.1f, 1.0f);
  std::vector<float> patterns = random_floats(5 * hd, rng);
  std::vector<float> rows(static_cast<size_t>(nc) * hd);
  for (int r = 0; r < nc; ++r) {
    const int k = (r * 7 + r / 3) % 5;
    std::copy(patterns.begin() + k * hd, patterns.begin() + (k + 1) * hd, rows.begin() + static_cast<size_t>(r) * hd);
  }
  DeviceVec<float> dq(q), dw(w), drows(rows), dscores(nc);
  DeviceVec<int32_t> dpos(std::vector<int32_t>{pos}), dact(std::vector<int32_t>{1}), dsel(topk);
  IndexerLaunch ix;
  ix.q = dq.get();
  ix.weights = dw.get();
  ix.rows = drows.get();
  ix.max_rows = nc;
  ix.heads = heads;
  ix.head_dim = hd;
  ix.ratio = 4;
  ix.topk = topk;
  ix.pos = dpos.get();
  ix.active = dact.get();
  ix.scores = dscores.get();
  ix.selected = dsel.get();
  for (int baseline = 0; baseline < 2; ++baseline) {
    ix.baseline_kernels = baseline != 0;
    const std::string name = std::string(baseline ? "baseline" : "current") + " indexer top-k with repeated scores";
    check(launch_indexer_select(ix, nullptr).ok(), name + ": launch");
    std::vector<float> s = dscores.host();
    std::vector<int32_t> ref;
    cpu::select_top_k(s.data(), nc, topk, &ref);
    std::vector<int32_t> got = dsel.host();
    int first_bad = -1;
    for (int i = 0; i < topk && first_bad < 0; ++i) if (got[i] != ref[i]) first_bad = i;
    if (first_bad >= 0) std::printf("  %s[%d]: got %d expected %d\n", name.c_str(), first_bad, got[first_bad], ref[first_bad]);
    check(first_bad < 0, name);
  }
}

void test_indexer(std::mt19937& rng) {
  for (int pos : {100, 255, 1999}) check_indexer_case(rng, 16, 128, 64, pos, 600, true, false);
  check_topk_ties(rng);
  // Real sizes: 64 heads x 128, top 512; the score buffer sized for a 64k context.
  check_indexer_case(rng, 64, 128, 512, 4095, 16384, true, true);
  check_indexer_case(rng, 64, 128, 512, 16383, 16384, true, true);
}

void test_argmax(std::mt19937& rng) {
  std::vector<float> logits = random_floats(129280, rng);
  logits[70000] = 5.0f;
  logits[90000] = 5.0f;
  logits[3] = NAN;
  DeviceVec<float> dl(logits);
  DeviceVec<int32_t> di(1);
  check(launch_argmax(dl.get(), static_cast<int>(logits.size()), di.get(), nullptr).ok(), "argmax launch");
  check(di.host()[0] == 70000, "argmax: ties go to the lower id, NaN ignored");
}

// Bit-for-bit comparison of two float vectors (NaN sentinels included): prints the
// first mismatches with index and both values; returns the count.
int count_bits_differ(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  int bad = 0;
  const size_t n = std::min(got.size(), want.size());
  for (size_t i = 0; i < n; ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b && bad++ < 4) {
      std::printf("  %s[%zu]: fused %.9g (0x%08x) unfused %.9g (0x%08x)\n", what.c_str(), i, got[i], a, want[i], b);
    }
  }
  if (got.size() != want.size()) {
    std::printf("  %s: sizes differ (%zu vs %zu)\n", what.c_str(), got.size(), want.size());
    ++bad;
  }
  return bad;
}

std::vector<float> head_of(const std::vector<float>& v, size_t n) {
  return std::vector<float>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(std::min(n, v.size())));
}

constexpr int64_t kHcSplitFloats = 32 * 8192;  // the decode workspace's split buffer size

// One random hc_post + mixing step on both paths:
//   unfused: launch_hc_post, launch_matvec(tile_partials_only) as CudaForward builds it,
//            launch_hc_pre_partials (mix_rows == hc_mix) or, for the head (mix_rows ==
//            hc_mult), the plain launch_matvec and launch_hc_head;
//   fused:   launch_hc_post_mix, then launch_hc_pre_partials / launch_hc_head_partials.
// Every output of the fused path starts as NaN; the new state, the partial sums, post,
// comb and the normalised sublayer input must match bit for bit. Other row counts: the
// state and the partial sums only (several block rows and tile widths).
void check_hc_post_mix_case(std::mt19937& rng, int dim, GgmlType type, int mix_rows, const char* label) {
  const ModelConfig c = deepseek_v4_flash_config();
  const int m = c.hc_mult, n = m * dim;
  const HcShape s{dim, m, c.hc_sinkhorn_iters, c.hc_eps, c.norm_eps};
  const bool pre = mix_rows == c.hc_mix(), head = mix_rows == m;
  const std::string name = std::string("hc_post_mix ") + label;
  std::vector<float> x = random_floats(n, rng, -2.0f, 2.0f), f = random_floats(dim, rng);
  std::vector<float> post = random_floats(m, rng, 0.0f, 2.0f), comb = random_floats(m * m, rng, 0.0f, 1.0f);
  std::vector<uint8_t> fn = random_blocks(type, mix_rows, n, rng);
  std::vector<float> scale = {0.7f, 1.3f, 2.1f}, base = random_floats(mix_rows, rng, -0.5f, 0.5f);
  std::vector<float> norm_w = random_floats(dim, rng, 0.5f, 1.5f);
  auto dfn = upload_matrix(type, n, mix_rows, 1, fn.data());
  check(dfn.ok(), name + ": mixing matrix upload");
  if (!dfn.ok()) return;
  const DeviceMatrix& W = (*dfn)->m;
  DeviceVec<float> dx(x), df(f), dpost(post), dcomb(comb), dsc(scale), db(base), dnw(norm_w);
  // Unfused.
  DeviceVec<float> xa(n), wa(kHcSplitFloats), mixa(mix_rows), posta(m), comba(m * m), outa(dim);
  check(launch_hc_post(dx.get(), df.get(), dpost.get(), dcomb.get(), s, xa.get(), nullptr).ok(), name + ": hc_post");
  MatvecLaunch ml;
  ml.w = &W;
  ml.x = xa.get();
  ml.y = mixa.get();
  ml.split_workspace = wa.get();
  ml.split_workspace_floats = kHcSplitFloats;
  ml.tile_partials_only = !head;
  Result<int> tiles_a = matvec_tile_columns(ml);
  check(tiles_a.ok(), name + ": matvec_tile_columns");
  if (!tiles_a.ok()) return;
  check(launch_matvec(ml, nullptr).ok(), name + ": matvec");
  if (pre) {
    check(launch_hc_pre_partials(xa.get(), wa.get(), *tiles_a, dsc.get(), db.get(), dnw.get(), s, posta.get(),
                                 comba.get(), outa.get(), nullptr).ok(), name + ": hc_pre_partials");
  } else if (head) {
    check(launch_hc_head(xa.get(), mixa.get(), dsc.get(), db.get(), dnw.get(), s, outa.get(), nullptr).ok(),
          name + ": hc_head");
  }
  // Fused, outputs poisoned with NaN.
  DeviceVec<float> xb(n), wb(kHcSplitFloats), postb(m), combb(m * m), outb(dim);
  cudaMemset(xb.get(), 0xFF, sizeof(float) * n);
  cudaMemset(wb.get(), 0xFF, sizeof(float) * kHcSplitFloats);
  cudaMemset(postb.get(), 0xFF, sizeof(float) * m);
  cudaMemset(combb.get(), 0xFF, sizeof(float) * m * m);
  cudaMemset(outb.get(), 0xFF, sizeof(float) * dim);
  HcPostMixLaunch pm;
  pm.x_in = dx.get();
  pm.f = df.get();
  pm.post = dpost.get();
  pm.comb = dcomb.get();
  pm.shape = s;
  pm.x_out = xb.get();
  pm.mix_fn = &W;
  pm.mix_partial = wb.get();
  pm.mix_partial_floats = kHcSplitFloats;
  Result<int> tiles_b = hc_post_mix_tiles(pm);
  check(tiles_b.ok() && *tiles_b == *tiles_a,
        name + ": tile count " + (tiles_b.ok() ? std::to_string(*tiles_b) : tiles_b.status().message()) +
            ", the matvec's " + std::to_string(*tiles_a));
  if (!tiles_b.ok()) return;
  Status st = launch_hc_post_mix(pm, nullptr);
  check(st.ok(), name + ": launch (" + st.message() + ")");
  if (pre) {
    check(launch_hc_pre_partials(xb.get(), wb.get(), *tiles_b, dsc.get(), db.get(), dnw.get(), s, postb.get(),
                                 combb.get(), outb.get(), nullptr).ok(), name + ": hc_pre_partials (fused)");
  } else if (head) {
    check(launch_hc_head_partials(xb.get(), wb.get(), *tiles_b, dsc.get(), db.get(), dnw.get(), s, outb.get(),
                                  nullptr).ok(), name + ": hc_head_partials (fused)");
  }
  check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernels ran");
  std::printf("%s: dim %d, %s %d x %d, %d column tiles\n", name.c_str(), dim, ggml_type_name(type).data(),
              mix_rows, n, *tiles_b);
  check(count_bits_differ(xb.host(), xa.host(), name + " x") == 0, name + ": new state bit-identical to hc_post");
  if (!head) {
    const size_t np = static_cast<size_t>(mix_rows) * *tiles_b;
    check(count_bits_differ(head_of(wb.host(), np), head_of(wa.host(), np), name + " partial") == 0,
          name + ": partial sums bit-identical to the matvec's column tiles");
    const std::vector<float> rest = wb.host();
    bool untouched = true;
    for (size_t i = np; i < rest.size() && untouched; ++i) untouched = std::isnan(rest[i]);
    check(untouched, name + ": nothing written past rows x tiles of the workspace");
  }
  if (pre) {
    check(count_bits_differ(postb.host(), posta.host(), name + " post") == 0, name + ": post bit-identical");
    check(count_bits_differ(combb.host(), comba.host(), name + " comb") == 0, name + ": comb bit-identical");
  }
  if (pre || head) {
    check(count_bits_differ(outb.host(), outa.host(), name + " n") == 0,
          name + ": normalised sublayer input bit-identical");
  }
}

// Bad launches are refused with a message naming the fault.
void check_hc_post_mix_errors(std::mt19937& rng) {
  const int dim = 256, m = 4, n = m * dim;
  const HcShape s{dim, m, 20, 1e-6f, 1e-6f};
  std::vector<uint8_t> fn = random_blocks(GgmlType::F16, 24, n, rng);
  auto dfn = upload_matrix(GgmlType::F16, n, 24, 1, fn.data());
  auto wrong = upload_matrix(GgmlType::F16, n / 2, 24, 1, fn.data());
  if (!dfn.ok() || !wrong.ok()) {
    check(false, "hc_post_mix errors: uploads");
    return;
  }
  DeviceVec<float> x(2 * n), f(dim), post(m), comb(m * m), ws(192);
  HcPostMixLaunch pm;
  pm.x_in = x.get();
  pm.f = f.get();
  pm.post = post.get();
  pm.comb = comb.get();
  pm.shape = s;
  pm.x_out = x.get() + n;
  pm.mix_fn = &(*dfn)->m;
  pm.mix_partial = ws.get();
  pm.mix_partial_floats = 16;  // 24 rows need 48 floats at the fewest tiles (2); the plan takes 8 tiles (192)
  auto expect = [&](const HcPostMixLaunch& l, const char* needle, const char* what) {
    Status st = launch_hc_post_mix(l, nullptr);
    check(!st.ok() && st.message().find(needle) != std::string::npos,
          std::string("hc_post_mix refuses ") + what + " (got: " + (st.ok() ? "ok" : st.message()) + ")");
  };
  expect(pm, "workspace", "a workspace too small");
  pm.mix_partial_floats = 192;
  HcPostMixLaunch l = pm;
  l.x_out = x.get() + 8;
  expect(l, "overlaps", "an in-place update");
  l = pm;
  l.mix_fn = &(*wrong)->m;
  expect(l, "columns", "a mixing matrix of the wrong width");
  l = pm;
  l.mix_fn = nullptr;
  expect(l, "mixing matrix", "a missing mixing matrix");
  l = pm;
  l.shape.mult = 9;
  expect(l, "stream count", "too many streams");
  check(launch_hc_post_mix(pm, nullptr).ok() && cudaDeviceSynchronize() == cudaSuccess,
        "hc_post_mix: a workspace of exactly rows x tiles is taken");
}

// Replay time of a recorded graph in microseconds (after warm-up replays).
double graph_us(cudaGraphExec_t g, cudaStream_t stream, int reps = 50) {
  for (int i = 0; i < 5; ++i) cudaGraphLaunch(g, stream);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0, stream);
  for (int i = 0; i < reps; ++i) cudaGraphLaunch(g, stream);
  cudaEventRecord(e1, stream);
  cudaEventSynchronize(e1);
  float ms = 0.0f;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 1000.0 * ms / reps;
}

// 40 dependent decode steps x <- hc_post(x, n, post, comb); (post, comb, n) <-
// hc_pre(x), the mixing projections alternating between two matrices as attention and
// MoE sublayers do, recorded as one CUDA graph per path: fused (hc_post_mix +
// hc_pre_partials, 2 launches per step) or unfused (hc_post + matvec + hc_pre_partials,
// 3), with the hc_pre kernel HcPreOptions choose. Or hc_pre alone, 40 times on the same
// state (pre_only).
class HcChainBench {
 public:
  static constexpr int kSteps = 40;

  HcChainBench(std::mt19937& rng, int dim) : dim_(dim) {
    const ModelConfig c = deepseek_v4_flash_config();
    m_ = c.hc_mult;
    n_ = m_ * dim;
    s_ = HcShape{dim, m_, c.hc_sinkhorn_iters, c.hc_eps, c.norm_eps};
    const int mix = c.hc_mix();
    for (int i = 0; i < 2; ++i) {
      std::vector<uint8_t> fn = random_blocks(GgmlType::F16, mix, n_, rng);
      auto w = upload_matrix(GgmlType::F16, n_, mix, 1, fn.data());
      ok_ = ok_ && w.ok();
      if (w.ok()) w_[i] = std::move(*w);
    }
    x0_ = random_floats(n_, rng, -2.0f, 2.0f);
    f0_ = random_floats(dim, rng);
    post0_ = random_floats(m_, rng, 0.0f, 2.0f);
    comb0_ = random_floats(m_ * m_, rng, 0.0f, 1.0f);
    const std::vector<float> scale = {0.7f, 1.3f, 2.1f}, base = random_floats(mix, rng, -0.5f, 0.5f);
    const std::vector<float> norm_w = random_floats(dim, rng, 0.5f, 1.5f);
    scale_ = std::make_unique<DeviceVec<float>>(scale);
    base_ = std::make_unique<DeviceVec<float>>(base);
    norm_ = std::make_unique<DeviceVec<float>>(norm_w);
    cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
  }
  ~HcChainBench() { cudaStreamDestroy(stream_); }

  bool ok() const { return ok_; }
  cudaStream_t stream() const { return stream_; }
  const HcShape& shape() const { return s_; }
  // For timing the Sinkhorn's share: graphs recorded afterwards run `iters` iterations.
  void set_sinkhorn_iters(int iters) { s_.sinkhorn_iters = iters; }

  struct Chain {
    DeviceVec<float> x, xb, split, mixv, post, comb, nrm;
    Chain(int n, int dim, int m) : x(n), xb(n), split(kHcSplitFloats), mixv(64), post(m), comb(m * m), nrm(dim) {}
  };
  std::unique_ptr<Chain> make_chain() const { return std::make_unique<Chain>(n_, dim_, m_); }

  // The chain's starting state (and, for pre_only, the partial sums of its x).
  void reset(Chain& ch) const {
    cudaMemcpy(ch.x.get(), x0_.data(), sizeof(float) * n_, cudaMemcpyHostToDevice);
    cudaMemcpy(ch.nrm.get(), f0_.data(), sizeof(float) * dim_, cudaMemcpyHostToDevice);
    cudaMemcpy(ch.post.get(), post0_.data(), sizeof(float) * m_, cudaMemcpyHostToDevice);
    cudaMemcpy(ch.comb.get(), comb0_.data(), sizeof(float) * m_ * m_, cudaMemcpyHostToDevice);
  }

  // Records the chain as a graph into *exec.
  Status record(Chain& ch, bool fused, bool pre_only, const HcPreOptions& options, cudaGraphExec_t* exec) {
    int tiles = 0;
    if (pre_only) {  // the state and partial sums hc_pre reads, formed once before recording
      reset(ch);
      Result<int> r = post_mix(ch, 0, ch.x.get(), ch.xb.get(), nullptr);
      if (!r.ok()) return r.status();
      tiles = *r;
      DS4_CUDA_TRY(cudaStreamSynchronize(stream_));
    }
    return capture([&] { return pre_only ? enqueue_pre_only(ch, tiles, options) : enqueue(ch, fused, options); },
                   exec);
  }

  // 40 launch_hc_sinkhorn on the chain's comb (in place), as a graph.
  Status record_sinkhorn(Chain& ch, HcSinkhorn sinkhorn, cudaGraphExec_t* exec) {
    reset(ch);
    return capture([&]() -> Status {
      for (int t = 0; t < kSteps; ++t) DS4_RETURN_IF_ERROR(launch_hc_sinkhorn(ch.comb.get(), s_, stream_, sinkhorn));
      return Status::Ok();
    }, exec);
  }

 private:
  template <typename Enqueue>
  Status capture(Enqueue enqueue_all, cudaGraphExec_t* exec) {
    cudaGraph_t graph;
    DS4_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    Status st = enqueue_all();
    cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (!st.ok() && end == cudaSuccess) cudaGraphDestroy(graph);
    DS4_RETURN_IF_ERROR(st);
    DS4_CUDA_TRY(end);
    cudaError_t inst = cudaGraphInstantiate(exec, graph, 0);
    cudaGraphDestroy(graph);
    DS4_CUDA_TRY(inst);
    return Status::Ok();
  }

  // hc_post of step t from `from` into `to` with its mixing partials: fused (one launch)
  // or, with `unfused` set, hc_post + the matvec. Returns the tile count.
  Result<int> post_mix(Chain& ch, int t, const float* from, float* to, const bool* unfused) {
    if (unfused && *unfused) {
      DS4_RETURN_IF_ERROR(launch_hc_post(from, ch.nrm.get(), ch.post.get(), ch.comb.get(), s_, to, stream_));
      MatvecLaunch ml;
      ml.w = &w_[t % 2]->m;
      ml.x = to;
      ml.y = ch.mixv.get();
      ml.split_workspace = ch.split.get();
      ml.split_workspace_floats = kHcSplitFloats;
      ml.tile_partials_only = true;
      Result<int> r = matvec_tile_columns(ml);
      if (!r.ok()) return r.status();
      DS4_RETURN_IF_ERROR(launch_matvec(ml, stream_));
      return *r;
    }
    HcPostMixLaunch pm;
    pm.x_in = from;
    pm.f = ch.nrm.get();
    pm.post = ch.post.get();
    pm.comb = ch.comb.get();
    pm.shape = s_;
    pm.x_out = to;
    pm.mix_fn = &w_[t % 2]->m;
    pm.mix_partial = ch.split.get();
    pm.mix_partial_floats = kHcSplitFloats;
    Result<int> r = hc_post_mix_tiles(pm);
    if (!r.ok()) return r.status();
    DS4_RETURN_IF_ERROR(launch_hc_post_mix(pm, stream_));
    return *r;
  }

  Status enqueue(Chain& ch, bool fused, const HcPreOptions& options) {
    const bool unfused = !fused;
    for (int t = 0; t < kSteps; ++t) {
      float* from = t % 2 ? ch.xb.get() : ch.x.get();
      float* to = t % 2 ? ch.x.get() : ch.xb.get();
      Result<int> tiles = post_mix(ch, t, from, to, &unfused);
      if (!tiles.ok()) return tiles.status();
      DS4_RETURN_IF_ERROR(launch_hc_pre_partials(to, ch.split.get(), *tiles, scale_->get(), base_->get(),
                                                 norm_->get(), s_, ch.post.get(), ch.comb.get(), ch.nrm.get(),
                                                 stream_, options));
    }
    return Status::Ok();
  }

  Status enqueue_pre_only(Chain& ch, int tiles, const HcPreOptions& options) {
    for (int t = 0; t < kSteps; ++t) {
      DS4_RETURN_IF_ERROR(launch_hc_pre_partials(ch.xb.get(), ch.split.get(), tiles, scale_->get(), base_->get(),
                                                 norm_->get(), s_, ch.post.get(), ch.comb.get(), ch.nrm.get(),
                                                 stream_, options));
    }
    return Status::Ok();
  }

  int dim_, m_ = 0, n_ = 0;
  HcShape s_;
  bool ok_ = true;
  std::unique_ptr<OwnedDeviceMatrix> w_[2];
  std::vector<float> x0_, f0_, post0_, comb0_;
  std::unique_ptr<DeviceVec<float>> scale_, base_, norm_;
  cudaStream_t stream_ = nullptr;
};

// The fused and unfused chains (default hc_pre kernel) must end bit-identical; prints
// the replay time of each graph, with PDL on and off.
void bench_hc_chain(std::mt19937& rng, int dim) {
  HcChainBench bench(rng, dim);
  check(bench.ok(), "hc chain: uploads");
  if (!bench.ok()) return;
  const int steps = HcChainBench::kSteps;
  auto a = bench.make_chain(), b = bench.make_chain();
  cudaStream_t stream = bench.stream();
  for (int pdl = 1; pdl >= 0; --pdl) {
    const bool was = pdl_enabled();
    const bool on = set_pdl_enabled(pdl == 1);
    cudaGraphExec_t ga = nullptr, gb = nullptr;
    Status ra = bench.record(*a, false, false, {}, &ga), rb = bench.record(*b, true, false, {}, &gb);
    check(ra.ok() && rb.ok(), "hc chain: graphs recorded (PDL " + std::string(on ? "on" : "off") + "): " +
                                  ra.message() + " " + rb.message());
    if (ra.ok() && rb.ok()) {
      bench.reset(*a);
      bench.reset(*b);
      cudaGraphLaunch(ga, stream);
      cudaGraphLaunch(gb, stream);
      check(cudaStreamSynchronize(stream) == cudaSuccess, "hc chain: graphs ran");
      const std::string tag = "hc chain dim " + std::to_string(dim) + (on ? " pdl" : " plain");
      check(count_bits_differ(b->x.host(), a->x.host(), tag + " x") == 0, tag + ": state after 40 steps bit-identical");
      check(count_bits_differ(b->post.host(), a->post.host(), tag + " post") == 0, tag + ": post bit-identical");
      check(count_bits_differ(b->comb.host(), a->comb.host(), tag + " comb") == 0, tag + ": comb bit-identical");
      check(count_bits_differ(b->nrm.host(), a->nrm.host(), tag + " n") == 0, tag + ": n bit-identical");
      const double ta = graph_us(ga, stream), tb = graph_us(gb, stream);
      std::printf("timing: %s, %d steps (hc_post + mix + hc_pre): unfused %.1f us (%.2f us/step, 3 launches), "
                  "fused %.1f us (%.2f us/step, 2 launches), saved %.2f us/step\n",
                  tag.c_str(), steps, ta, ta / steps, tb, tb / steps, (ta - tb) / steps);
    }
    if (ga) cudaGraphExecDestroy(ga);
    if (gb) cudaGraphExecDestroy(gb);
    set_pdl_enabled(was);
  }
}

// The hc_pre kernels under comparison: the cluster sizes and both Sinkhorns.
struct HcKernelVariant {
  const char* name;
  HcPreOptions options;
};
const HcKernelVariant kHcKernelVariants[] = {
    {"cluster 4", {4, HcSinkhorn::kShuffle}},
    {"cluster 8", {8, HcSinkhorn::kShuffle}},
    {"cluster 16", {16, HcSinkhorn::kShuffle}},
    {"cluster 8, Sinkhorn in registers", {8, HcSinkhorn::kRegisters}},
    {"cluster 16, Sinkhorn in registers", {16, HcSinkhorn::kRegisters}},
};

// The largest |got - want| / |want| (infinite where one is NaN and the other not, or
// want is 0 and got is not); prints where it is.
double max_rel_diff(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    double r = 0.0;
    if (std::isnan(got[i]) != std::isnan(want[i])) {
      r = INFINITY;
    } else if (!std::isnan(want[i]) && got[i] != want[i]) {
      r = want[i] == 0.0f ? INFINITY : std::fabs(static_cast<double>(got[i]) - want[i]) / std::fabs(want[i]);
    }
    if (r > worst) {
      worst = r;
      at = i;
    }
  }
  if (worst > 0.0) {
    std::printf("  %s: max relative difference %.3g at [%zu] (got %.9g, want %.9g)\n", what.c_str(), worst, at,
                got[at], want[at]);
  }
  return worst;
}

int device_major() {
  int device = 0, major = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  return major;
}

// Every hc_pre / hc_head kernel variant against the single-block kernel on the same
// random inputs, from mixing values (mix_raw) and from column-tile partial sums: post,
// comb and the sublayer input elementwise within 1e-6 relative (max printed), every
// output written (outputs start as NaN), the two Sinkhorns bit-identical.
void compare_hc_kernels(std::mt19937& rng, int dim, int tiles) {
  const ModelConfig c = deepseek_v4_flash_config();
  const int m = c.hc_mult, n = m * dim;
  const HcShape s{dim, m, c.hc_sinkhorn_iters, c.hc_eps, c.norm_eps};
  for (int head = 0; head < 2; ++head) {
    const int rows = head ? m : c.hc_mix();
    for (int partial = 0; partial < 2; ++partial) {
      const std::string kind = std::string(head ? "hc_head" : "hc_pre") + (partial ? " partials" : " mix_raw") +
                               " dim " + std::to_string(dim);
      double worst[3] = {0.0, 0.0, 0.0};
      for (int trial = 0; trial < 4; ++trial) {
        const std::vector<float> x = random_floats(n, rng, -2.0f, 2.0f);
        const std::vector<float> mix = partial ? random_floats(static_cast<size_t>(rows) * tiles, rng, -0.15f, 0.15f)
                                               : random_floats(rows, rng, -1.5f, 1.5f);
        const std::vector<float> scale = {0.7f, 1.3f, 2.1f}, base = random_floats(rows, rng, -0.5f, 0.5f);
        const std::vector<float> norm_w = random_floats(dim, rng, 0.5f, 1.5f);
        DeviceVec<float> dx(x), dmix(mix), dsc(scale), db(base), dnw(norm_w);
        struct Outputs {
          DeviceVec<float> post, comb, out;
          Outputs(int m, int dim) : post(m), comb(m * m), out(dim) {}
        };
        auto run = [&](const HcPreOptions& o, Outputs* out) {
          cudaMemset(out->post.get(), 0xFF, sizeof(float) * m);
          cudaMemset(out->comb.get(), 0xFF, sizeof(float) * m * m);
          cudaMemset(out->out.get(), 0xFF, sizeof(float) * dim);
          Status st;
          if (head) {
            st = partial ? launch_hc_head_partials(dx.get(), dmix.get(), tiles, dsc.get(), db.get(), dnw.get(), s,
                                                   out->out.get(), nullptr, o)
                         : launch_hc_head(dx.get(), dmix.get(), dsc.get(), db.get(), dnw.get(), s, out->out.get(),
                                          nullptr, o);
          } else {
            st = partial ? launch_hc_pre_partials(dx.get(), dmix.get(), tiles, dsc.get(), db.get(), dnw.get(), s,
                                                  out->post.get(), out->comb.get(), out->out.get(), nullptr, o)
                         : launch_hc_pre(dx.get(), dmix.get(), dsc.get(), db.get(), dnw.get(), s, out->post.get(),
                                         out->comb.get(), out->out.get(), nullptr, o);
          }
          const cudaError_t ran = cudaDeviceSynchronize();
          check(st.ok() && ran == cudaSuccess, kind + ": launch (" + st.message() + ", " + cudaGetErrorName(ran) + ")");
        };
        // With comb_logits_only, hc_pre then launch_hc_sinkhorn: the same bits as `direct`.
        auto check_deferred = [&](const HcPreOptions& o, const Outputs& direct, const std::string& name) {
          HcPreOptions deferred = o;
          deferred.comb_logits_only = true;
          Outputs got(m, dim);
          run(deferred, &got);
          const Status st = launch_hc_sinkhorn(got.comb.get(), s, nullptr, o.sinkhorn);
          check(st.ok() && cudaDeviceSynchronize() == cudaSuccess, name + ": hc_sinkhorn launch " + st.message());
          check(count_bits_differ(got.post.host(), direct.post.host(), name + " deferred post") == 0 &&
                    count_bits_differ(got.comb.host(), direct.comb.host(), name + " deferred comb") == 0 &&
                    count_bits_differ(got.out.host(), direct.out.host(), name + " deferred out") == 0,
                name + ": Sinkhorn deferred to launch_hc_sinkhorn gives the same bits");
        };
        Outputs ref(m, dim);
        run(HcPreOptions{0, HcSinkhorn::kShuffle}, &ref);
        if (!head) check_deferred(HcPreOptions{0, HcSinkhorn::kShuffle}, ref, kind + ", single block");
        const std::vector<float> ref_post = ref.post.host(), ref_comb = ref.comb.host(), ref_out = ref.out.host();
        std::vector<std::vector<float>> shuffle_results[17];
        for (const HcKernelVariant& v : kHcKernelVariants) {
          if (head && v.options.sinkhorn == HcSinkhorn::kRegisters) continue;  // no Sinkhorn in hc_head
          const std::string name = kind + ", " + v.name + " (trial " + std::to_string(trial) + ")";
          Outputs got(m, dim);
          run(v.options, &got);
          if (trial == 0) {  // asked after the run: a refused launch falls back to the single-block kernel
            const int used = hc_pre_cluster_size(s, v.options, dx.get(), ref.out.get());
            std::printf("%s, %s: %s\n", kind.c_str(), v.name,
                        used ? ("runs as a cluster of " + std::to_string(used)).c_str()
                             : "not available here: the single-block kernel runs");
            if (v.options.cluster <= 8 && device_major() >= 9) {
              check(used == v.options.cluster, name + ": the cluster kernel runs on this sm_90+ device");
            }
          }
          if (!head) check_deferred(v.options, got, name);
          const std::vector<float> out = got.out.host(), post = got.post.host(), comb = got.comb.host();
          int nan = 0;
          for (float f : out) nan += std::isnan(f) ? 1 : 0;
          if (!head) for (float f : post) nan += std::isnan(f) ? 1 : 0;
          if (!head) for (float f : comb) nan += std::isnan(f) ? 1 : 0;
          check(nan == 0, name + ": every output written (" + std::to_string(nan) + " left NaN)");
          const double r_out = max_rel_diff(out, ref_out, name + " out");
          check(r_out <= 1e-6, name + ": sublayer input within 1e-6 of the single-block kernel");
          worst[0] = std::max(worst[0], r_out);
          if (!head) {
            const double r_post = max_rel_diff(post, ref_post, name + " post");
            const double r_comb = max_rel_diff(comb, ref_comb, name + " comb");
            check(r_post <= 1e-6, name + ": post within 1e-6 of the single-block kernel");
            check(r_comb <= 1e-6, name + ": comb within 1e-6 of the single-block kernel");
            worst[1] = std::max(worst[1], r_post);
            worst[2] = std::max(worst[2], r_comb);
            std::vector<std::vector<float>>& same_size = shuffle_results[v.options.cluster];
            if (v.options.sinkhorn == HcSinkhorn::kShuffle) {
              same_size = {post, comb, out};
            } else if (!same_size.empty()) {
              check(count_bits_differ(post, same_size[0], name + " post") == 0 &&
                        count_bits_differ(comb, same_size[1], name + " comb") == 0 &&
                        count_bits_differ(out, same_size[2], name + " out") == 0,
                    name + ": bit-identical to the shuffle Sinkhorn");
            }
          }
        }
      }
      std::printf("%s: cluster kernels vs single block over 4 trials: max relative difference out %.3g, post %.3g, "
                  "comb %.3g\n", kind.c_str(), worst[0], worst[1], worst[2]);
    }
  }
}

// Each hc_pre variant in the fused 40-step chain (and hc_pre alone, 40 launches),
// timed against the single-block kernel; the chains' final state, post, comb and n
// compared with the single-block chain (max relative difference printed).
void bench_hc_pre_kernels(std::mt19937& rng, int dim) {
  HcChainBench bench(rng, dim);
  check(bench.ok(), "hc_pre kernels bench: uploads");
  if (!bench.ok()) return;
  const int steps = HcChainBench::kSteps;
  cudaStream_t stream = bench.stream();
  auto ref = bench.make_chain();
  cudaGraphExec_t gref = nullptr, gref_pre = nullptr;
  const HcPreOptions single{0, HcSinkhorn::kShuffle};
  Status st = bench.record(*ref, true, false, single, &gref);
  auto ref_pre = bench.make_chain();
  if (st.ok()) st = bench.record(*ref_pre, true, true, single, &gref_pre);
  check(st.ok(), "hc_pre kernels bench: single-block graphs recorded: " + st.message());
  if (!st.ok()) return;
  bench.reset(*ref);
  cudaGraphLaunch(gref, stream);
  check(cudaStreamSynchronize(stream) == cudaSuccess, "hc_pre kernels bench: single-block chain ran");
  // The state after one replay (40 steps), before the timing replays move it on.
  const std::vector<float> ref_x = ref->x.host(), ref_post = ref->post.host(), ref_comb = ref->comb.host(),
                           ref_n = ref->nrm.host();
  const double t_ref = graph_us(gref, stream), t_ref_pre = graph_us(gref_pre, stream);
  std::printf("timing: hc_pre dim %d single block: chain (hc_post_mix + hc_pre) %.2f us/step; hc_pre alone "
              "%.2f us/launch\n", dim, t_ref / steps, t_ref_pre / steps);
  for (const HcKernelVariant& v : kHcKernelVariants) {
    const int used = hc_pre_cluster_size(bench.shape(), v.options);
    if (used != v.options.cluster) {
      std::printf("timing: hc_pre dim %d %s: not available here\n", dim, v.name);
      continue;
    }
    auto ch = bench.make_chain(), pre = bench.make_chain();
    cudaGraphExec_t g = nullptr, gpre = nullptr;
    st = bench.record(*ch, true, false, v.options, &g);
    if (st.ok()) st = bench.record(*pre, true, true, v.options, &gpre);
    check(st.ok(), std::string("hc_pre kernels bench: graphs recorded, ") + v.name + ": " + st.message());
    if (st.ok()) {
      bench.reset(*ch);
      cudaGraphLaunch(g, stream);
      check(cudaStreamSynchronize(stream) == cudaSuccess, std::string("hc_pre kernels bench: chain ran, ") + v.name);
      const std::string tag = "hc_pre chain dim " + std::to_string(dim) + " " + v.name;
      const double rx = max_rel_diff(ch->x.host(), ref_x, tag + " x");
      const double rp = max_rel_diff(ch->post.host(), ref_post, tag + " post");
      const double rc = max_rel_diff(ch->comb.host(), ref_comb, tag + " comb");
      const double rn = max_rel_diff(ch->nrm.host(), ref_n, tag + " n");
      check(std::max({rx, rp, rc, rn}) <= 1e-5, tag + ": 40 steps within 1e-5 of the single-block chain");
      const double t = graph_us(g, stream), tpre = graph_us(gpre, stream);
      std::printf("timing: hc_pre dim %d %s: chain %.2f us/step (single block %.2f, saved %.2f); hc_pre alone "
                  "%.2f us/launch (single block %.2f); chain vs single block: max relative difference x %.3g "
                  "post %.3g comb %.3g n %.3g\n", dim, v.name, t / steps, t_ref / steps, (t_ref - t) / steps,
                  tpre / steps, t_ref_pre / steps, rx, rp, rc, rn);
    }
    if (g) cudaGraphExecDestroy(g);
    if (gpre) cudaGraphExecDestroy(gpre);
  }
  // hc_pre without the Sinkhorn (comb_logits_only) and the Sinkhorn launch alone.
  for (int cluster : {0, 8}) {
    auto pre = bench.make_chain();
    cudaGraphExec_t gpre = nullptr;
    HcPreOptions o{cluster, HcSinkhorn::kShuffle};
    o.comb_logits_only = true;
    st = bench.record(*pre, true, true, o, &gpre);
    check(st.ok(), "hc_pre kernels bench: comb_logits_only graph recorded: " + st.message());
    if (st.ok()) {
      std::printf("timing: hc_pre dim %d %s, Sinkhorn deferred (comb_logits_only): hc_pre alone %.2f us/launch\n",
                  dim, cluster ? "cluster 8" : "single block", graph_us(gpre, stream) / steps);
      cudaGraphExecDestroy(gpre);
    }
  }
  for (HcSinkhorn k : {HcSinkhorn::kShuffle, HcSinkhorn::kRegisters}) {
    auto sk = bench.make_chain();
    cudaGraphExec_t gs = nullptr;
    st = bench.record_sinkhorn(*sk, k, &gs);
    check(st.ok(), "hc_pre kernels bench: Sinkhorn graph recorded: " + st.message());
    if (st.ok()) {
      std::printf("timing: hc_sinkhorn (%s), %d iterations: %.2f us/launch\n",
                  k == HcSinkhorn::kShuffle ? "shuffles" : "registers", bench.shape().sinkhorn_iters,
                  graph_us(gs, stream) / steps);
      cudaGraphExecDestroy(gs);
    }
  }
  // The Sinkhorn's share: hc_pre alone with 1 iteration instead of 20.
  bench.set_sinkhorn_iters(1);
  const HcPreOptions one_iteration[] = {single, {8, HcSinkhorn::kShuffle}, {8, HcSinkhorn::kRegisters}};
  for (const HcPreOptions& o : one_iteration) {
    auto pre = bench.make_chain();
    cudaGraphExec_t gpre = nullptr;
    st = bench.record(*pre, true, true, o, &gpre);
    check(st.ok(), "hc_pre kernels bench: 1-iteration graph recorded: " + st.message());
    if (st.ok()) {
      std::printf("timing: hc_pre dim %d %s, 1 Sinkhorn iteration: hc_pre alone %.2f us/launch\n", dim,
                  o.cluster == 0 ? "single block" : o.sinkhorn == HcSinkhorn::kShuffle ? "cluster 8" :
                  "cluster 8, Sinkhorn in registers", graph_us(gpre, stream) / steps);
      cudaGraphExecDestroy(gpre);
    }
  }
  cudaGraphExecDestroy(gref);
  cudaGraphExecDestroy(gref_pre);
}

// Where the cluster kernel does not apply, the single-block kernel runs.
void check_hc_cluster_fallbacks() {
  const HcShape real{4096, 4, 20, 1e-6f, 1e-6f};
  HcShape ragged = real, two = real;
  ragged.dim = 200;  // 200 / 8 blocks: not a multiple of 4 columns
  two.mult = 2;
  const HcPreOptions eight{8, HcSinkhorn::kShuffle};
  check(hc_pre_cluster_size(ragged, eight) == 0, "hc_pre: dim 200 runs the single-block kernel");
  check(hc_pre_cluster_size(two, eight) == 0, "hc_pre: 2 streams run the single-block kernel");
  check(hc_pre_cluster_size(real, HcPreOptions{0, HcSinkhorn::kShuffle}) == 0,
        "hc_pre: cluster 0 asks for the single-block kernel");
  DeviceVec<float> buf(64);
  check(hc_pre_cluster_size(real, eight, buf.get() + 1, buf.get()) == 0,
        "hc_pre: a state not 16-byte aligned runs the single-block kernel");
  std::printf("hc_pre: default kernel for the model's shape here: %s\n",
              hc_pre_cluster_size(real) ? ("cluster of " + std::to_string(hc_pre_cluster_size(real))).c_str()
                                        : "single block");
}

// The hc_pre / hc_head kernels against each other at the model's size (4096, 128
// column tiles) and the tiny fixtures' (256, 8 tiles), and their timing.
void test_hc_pre_kernels(std::mt19937& rng) {
  check_hc_cluster_fallbacks();
  compare_hc_kernels(rng, 4096, 128);
  compare_hc_kernels(rng, 256, 8);
  bench_hc_pre_kernels(rng, 256);
  bench_hc_pre_kernels(rng, 4096);
}

void test_hc_post_mix(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  // The matvec plans' widths recovered from their tile counts (cuda/column_tile.cuh).
  const int64_t ns_cases[] = {512, 32, 25, 128, 2, 1, 3};
  const int tiles_cases[] = {128, 8, 7, 4, 1, 1, 2};
  const int lanes_want[] = {4, 4, 4, 32, 2, 1, 2};
  for (int i = 0; i < 7; ++i) {
    const int got = cuda_detail::tile_lanes_for(ns_cases[i], tiles_cases[i]);
    check(got == lanes_want[i], "tile_lanes_for(" + std::to_string(ns_cases[i]) + ", " +
                                    std::to_string(tiles_cases[i]) + ") = " + std::to_string(got) + ", want " +
                                    std::to_string(lanes_want[i]));
  }
  check(cuda_detail::tile_lanes_for(512, 5) == 0, "tile_lanes_for: no width gives 5 tiles of 512 chunks");
  check_hc_post_mix_case(rng, c.dim, GgmlType::F16, c.hc_mix(), "real (pre)");
  check_hc_post_mix_case(rng, c.dim, GgmlType::F16, c.hc_mult, "real (head)");
  check_hc_post_mix_case(rng, 256, GgmlType::F16, c.hc_mix(), "tiny (pre)");
  check_hc_post_mix_case(rng, 256, GgmlType::F16, c.hc_mult, "tiny (head)");
  check_hc_post_mix_case(rng, 256, GgmlType::F32, c.hc_mix(), "tiny F32 (pre)");
  check_hc_post_mix_case(rng, 256, GgmlType::Q8_0, c.hc_mix(), "tiny Q8_0 (pre)");
  check_hc_post_mix_case(rng, 200, GgmlType::F16, c.hc_mix(), "ragged last tile (pre)");
  check_hc_post_mix_case(rng, 256, GgmlType::F32, 100, "100 rows (block rows)");
  check_hc_post_mix_case(rng, 1024, GgmlType::F16, 300, "300 rows (block rows)");
  check_hc_post_mix_errors(rng);
  bench_hc_chain(rng, 256);
  bench_hc_chain(rng, c.dim);
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  std::mt19937 rng(424242);
  test_row_post(rng);
  test_hyper_connections(rng, 256);
  test_hyper_connections(rng, 4096);
  test_hc_pre_kernels(rng);
  test_hc_post_mix(rng);
  test_router(rng);
  test_attention(rng);
  bench_attention(rng);
  test_indexer(rng);
  test_argmax(rng);
  return finish("ops_test");
}
