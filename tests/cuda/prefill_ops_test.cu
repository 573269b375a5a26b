// The batched prefill ops (cuda/prefill_ops.h, RowPostLaunch::rows_per_pos) against the
// single-token launches run token by token: every output element compared bit for bit,
// on random inputs with the real model's shapes, for n = 1, 5 and 300 tokens. Where the
// CPU reference exists (engine/cpu) a few tokens are also compared with it within f32
// tolerance. The MoE grouping is checked exhaustively against a host stable sort
// (offsets, permutation, token rows, row scales, slots), the combine against a host sum
// in the same order. The f32 products over a chunk (small and tiled kernels) are checked
// against a double sum and the matrix-vector kernel. Finally every launch is timed for
// n = 2048 (microseconds), the tiled kernel beside the kernels it replaces.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu/hyper_connections.h"
#include "cpu/moe.h"
#include "cpu/qat.h"
#include "cpu/rope.h"
#include "cpu/vector_ops.h"
#include "format/quant.h"
#include "cuda/device_model.h"
#include "cuda/hyper_connections.h"
#include "cuda/matvec.h"
#include "cuda/moe.h"
#include "cuda/prefill_ops.h"
#include "cuda/row_ops.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

constexpr int kTokenCounts[] = {1, 5, 300};
constexpr int kVocab = 1000;  // rows of the test embedding / hash table

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

std::string show(float v) {
  char b[64];
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  std::snprintf(b, sizeof b, "%.9g (0x%08x)", v, bits);
  return b;
}
std::string show(int32_t v) { return std::to_string(v); }

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }
bool same_bits(int32_t a, int32_t b) { return a == b; }

// Bit-exact comparison; prints the first 20 differences as (row, column) with the row
// length `row_len`. One check per call.
template <typename T>
void expect_identical(const std::vector<T>& got, const std::vector<T>& want, int64_t row_len,
                      const std::string& what) {
  int64_t bad = 0;
  if (got.size() != want.size()) {
    check(false, what + ": size " + std::to_string(got.size()) + " != expected " + std::to_string(want.size()));
    return;
  }
  for (size_t i = 0; i < want.size(); ++i) {
    if (same_bits(got[i], want[i])) continue;
    if (bad++ < 20) {
      std::printf("  %s: [%zu] (row %lld, col %lld): expected %s got %s\n", what.c_str(), i,
                  static_cast<long long>(i / row_len), static_cast<long long>(i % row_len),
                  show(want[i]).c_str(), show(got[i]).c_str());
    }
  }
  check(bad == 0, what + ": bit-identical (" + std::to_string(bad) + " of " + std::to_string(want.size()) +
                      " differ)");
}

// Within rel * |want| + abs; first 20 differences printed.
void expect_close(const float* got, const float* want, int64_t count, double rel, double abs_tol,
                  const std::string& what) {
  int64_t bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (std::fabs(got[i] - want[i]) <= rel * std::fabs(want[i]) + abs_tol) continue;
    if (bad++ < 20) std::printf("  %s: [%lld]: cpu %.9g gpu %.9g\n", what.c_str(), static_cast<long long>(i), want[i], got[i]);
  }
  check(bad == 0, what + ": within tolerance of the CPU reference (" + std::to_string(bad) + " of " +
                      std::to_string(count) + " outside)");
}

void expect_ok(const Status& st, const std::string& what) {
  if (!st.ok()) std::printf("  %s: %s\n", what.c_str(), st.message().c_str());
  check(st.ok(), what + " succeeds");
}

void expect_sync(const std::string& what) {
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) std::printf("  %s: %s\n", what.c_str(), cudaGetErrorString(err));
  check(err == cudaSuccess, what + ": kernels ran without a CUDA error");
}

HcShape real_hc_shape() {
  const ModelConfig c = deepseek_v4_flash_config();
  return HcShape{c.dim, c.hc_mult, c.hc_sinkhorn_iters, c.hc_eps, c.norm_eps};
}

std::vector<int32_t> random_tokens(int n, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> d(0, kVocab - 1);
  std::vector<int32_t> t(n);
  for (auto& v : t) v = d(rng);
  if (n > 3) t[2] = t[1];  // a repeated token
  return t;
}

// ---------------------------------------------------------------- hc_embed

void test_embed(std::mt19937& rng) {
  const HcShape s = real_hc_shape();
  const int64_t state = static_cast<int64_t>(s.mult) * s.dim;
  for (GgmlType type : {GgmlType::F16, GgmlType::F32}) {
    std::vector<uint8_t> embd = random_blocks(type, kVocab, s.dim, rng);
    DeviceVec<uint8_t> de(embd);
    for (int n : kTokenCounts) {
      const std::string name = std::string("hc_embed_tokens ") + (type == GgmlType::F16 ? "F16" : "F32") +
                               " n=" + std::to_string(n);
      std::vector<int32_t> tokens = random_tokens(n, rng);
      DeviceVec<int32_t> dt(tokens);
      DeviceVec<float> got(n * state), want(n * state);
      expect_ok(launch_hc_embed_tokens(de.get(), type, dt.get(), n, s, got.get(), nullptr), name);
      for (int t = 0; t < n; ++t) {
        expect_ok(launch_hc_embed(de.get(), type, dt.get() + t, s, want.get() + t * state, nullptr), name + " reference");
      }
      expect_sync(name);
      expect_identical(got.host(), want.host(), state, name);
    }
  }
  DeviceVec<float> x(1);
  const Status bad = launch_hc_embed_tokens(nullptr, GgmlType::Q8_0, nullptr, 1, s, x.get(), nullptr);
  check(!bad.ok() && bad.message().find("F16 or F32") != std::string::npos,
        "hc_embed_tokens: a quantized embedding is refused with a message naming the types (got: " + bad.message() + ")");
}

// ---------------------------------------------------------------- hc_pre / hc_post

// The host reference of hc_pre for one token (spec/MODEL.md §2.3): mixes scaled by the RMS
// factor, Sinkhorn split, weighted stream sum, RMSNorm with weight.
void cpu_hc_pre(const HcShape& s, const float* x, const float* mix_raw, const float* scale, const float* base,
                const float* norm_w, float* post, float* comb, float* out) {
  const int64_t n = static_cast<int64_t>(s.mult) * s.dim;
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float factor = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + s.norm_eps));
  const int mix_n = (2 + s.mult) * s.mult;
  std::vector<float> m(mix_n);
  for (int i = 0; i < mix_n; ++i) m[i] = mix_raw[i] * factor;
  cpu::HcMix mix;
  cpu::hc_split_sinkhorn(m.data(), scale, base, s.mult, s.sinkhorn_iters, s.hc_eps, &mix);
  std::vector<float> y(s.dim);
  for (int d = 0; d < s.dim; ++d) {
    float acc = 0;
    for (int h = 0; h < s.mult; ++h) acc += mix.pre[h] * x[h * s.dim + d];
    y[d] = acc;
  }
  cpu::rms_norm(y.data(), norm_w, s.dim, s.norm_eps, out);
  std::copy(mix.post, mix.post + s.mult, post);
  std::copy(mix.comb, mix.comb + s.mult * s.mult, comb);
}

void test_hc_pre_shape(const HcShape& s, const std::string& label, std::mt19937& rng) {
  const int m = s.mult, mix_n = (2 + m) * m;
  const int64_t state = static_cast<int64_t>(m) * s.dim;
  std::vector<float> scale = {0.7f, 1.3f, 2.1f}, base = random_floats(mix_n, rng, -0.5f, 0.5f);
  std::vector<float> norm_w = random_floats(s.dim, rng, 0.5f, 1.5f);
  DeviceVec<float> dsc(scale), db(base), dnw(norm_w);
  for (int n : kTokenCounts) {
    const std::string name = "hc_pre_tokens " + label + " n=" + std::to_string(n);
    std::vector<float> x = random_floats(n * state, rng, -2.0f, 2.0f);
    for (int t = 0; t < n; t += 4) {  // tokens of very different magnitude
      for (int64_t i = 0; i < state; ++i) x[t * state + i] *= std::ldexp(1.0f, (t % 9) - 4);
    }
    std::vector<float> mix = random_floats(static_cast<size_t>(n) * mix_n, rng, -3.0f, 3.0f);
    DeviceVec<float> dx(x), dmix(mix);
    DeviceVec<float> post(n * m), comb(n * m * m), out(n * s.dim);
    DeviceVec<float> rpost(n * m), rcomb(n * m * m), rout(n * s.dim);
    expect_ok(launch_hc_pre_tokens(dx.get(), dmix.get(), dsc.get(), db.get(), dnw.get(), s, n, post.get(),
                                   comb.get(), out.get(), nullptr),
              name);
    for (int t = 0; t < n; ++t) {
      expect_ok(launch_hc_pre(dx.get() + t * state, dmix.get() + t * mix_n, dsc.get(), db.get(), dnw.get(), s,
                              rpost.get() + t * m, rcomb.get() + t * m * m, rout.get() + t * s.dim, nullptr),
                name + " reference");
    }
    expect_sync(name);
    expect_identical(post.host(), rpost.host(), m, name + " post");
    expect_identical(comb.host(), rcomb.host(), m * m, name + " comb");
    const std::vector<float> got_out = out.host(), got_post = post.host(), got_comb = comb.host();
    expect_identical(got_out, rout.host(), s.dim, name + " out");
    // CPU reference for the first and last tokens.
    for (int t : {0, n - 1}) {
      std::vector<float> cp(m), cc(m * m), co(s.dim);
      cpu_hc_pre(s, x.data() + t * state, mix.data() + t * mix_n, scale.data(), base.data(), norm_w.data(), cp.data(),
                 cc.data(), co.data());
      const std::string at = name + " token " + std::to_string(t);
      expect_close(got_post.data() + t * m, cp.data(), m, 1e-4, 1e-6, at + " post");
      expect_close(got_comb.data() + t * m * m, cc.data(), m * m, 1e-4, 1e-6, at + " comb");
      expect_close(got_out.data() + t * s.dim, co.data(), s.dim, 1e-4, 1e-5, at + " out");
    }
  }
}

void test_hc_post_shape(const HcShape& s, const std::string& label, std::mt19937& rng) {
  const int m = s.mult;
  const int64_t state = static_cast<int64_t>(m) * s.dim;
  for (int n : kTokenCounts) {
    const std::string name = "hc_post_tokens " + label + " n=" + std::to_string(n);
    std::vector<float> x = random_floats(n * state, rng, -2.0f, 2.0f), f = random_floats(n * s.dim, rng);
    std::vector<float> post = random_floats(n * m, rng, 0.0f, 2.0f), comb = random_floats(n * m * m, rng, 0.0f, 1.0f);
    DeviceVec<float> dx(x), df(f), dp(post), dc(comb), got(n * state), want(n * state);
    expect_ok(launch_hc_post_tokens(dx.get(), df.get(), dp.get(), dc.get(), s, n, got.get(), nullptr), name);
    for (int t = 0; t < n; ++t) {
      expect_ok(launch_hc_post(dx.get() + t * state, df.get() + t * s.dim, dp.get() + t * m, dc.get() + t * m * m, s,
                               want.get() + t * state, nullptr),
                name + " reference");
    }
    expect_sync(name);
    const std::vector<float> g = got.host();
    expect_identical(g, want.host(), s.dim, name);
    ModelConfig c;
    c.dim = s.dim;
    c.hc_mult = m;
    for (int t : {0, n - 1}) {
      cpu::HcMix mix;
      std::copy(post.begin() + t * m, post.begin() + (t + 1) * m, mix.post);
      std::copy(comb.begin() + t * m * m, comb.begin() + (t + 1) * m * m, mix.comb);
      std::vector<float> ref(state);
      cpu::hc_post(c, f.data() + t * s.dim, x.data() + t * state, mix, ref.data());
      expect_close(g.data() + t * state, ref.data(), state, 1e-5, 1e-6, name + " token " + std::to_string(t));
    }
  }
}

void test_hyper_connections(std::mt19937& rng) {
  const HcShape real = real_hc_shape();
  test_hc_pre_shape(real, "dim 4096 mult 4", rng);
  test_hc_post_shape(real, "dim 4096 mult 4", rng);
  HcShape other = real;  // the general (serial Sinkhorn) path
  other.dim = 512;
  other.mult = 3;
  test_hc_pre_shape(other, "dim 512 mult 3", rng);
  test_hc_post_shape(other, "dim 512 mult 3", rng);
}

// ---------------------------------------------------------------- router

void test_router(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  const int ne = c.n_experts, k = c.n_experts_used;
  std::uniform_int_distribution<int32_t> any_expert(0, ne - 1);
  std::vector<int32_t> tid(static_cast<size_t>(kVocab) * k);
  for (auto& e : tid) e = any_expert(rng);
  std::vector<int32_t> tid_bad = tid;  // out-of-range entries: the router clamps them to expert 0
  tid_bad[5] = -1;
  tid_bad[17] = ne;
  DeviceVec<int32_t> dtid(tid), dtid_bad(tid_bad);
  for (int hash = 0; hash < 2; ++hash) {
    for (int n : kTokenCounts) {
      const std::string name = std::string("router_tokens ") + (hash ? "hash" : "top-k") + " n=" + std::to_string(n);
      std::vector<float> logits = random_floats(static_cast<size_t>(n) * ne, rng, -4.0f, 4.0f);
      for (int t = 0; t < n; t += 3) {  // exact ties in every third token
        for (int e = 0; e < ne; e += 5) logits[t * ne + e] = logits[t * ne];
      }
      std::vector<float> bias = random_floats(ne, rng, -0.2f, 0.2f);
      std::vector<int32_t> tokens = random_tokens(n, rng);
      if (hash && n > 1) tokens[n - 1] = 0;  // row 0 of tid_bad holds the bad entries
      DeviceVec<float> dl(logits), db(bias), w(n * k), rw(n * k);
      DeviceVec<int32_t> dt(tokens), ids(n * k), rids(n * k);
      for (int table = 0; table < (hash ? 2 : 1); ++table) {
        const std::string tname = name + (table ? " (table with out-of-range ids)" : "");
        RouterTokensLaunch rl;
        rl.base.logits = dl.get();
        rl.base.n_experts = ne;
        rl.base.n_used = k;
        rl.base.bias = hash ? nullptr : db.get();
        rl.base.tid2eid = hash ? (table ? dtid_bad.get() : dtid.get()) : nullptr;
        rl.base.token = dt.get();
        rl.base.route_scale = c.route_scale;
        rl.base.route_norm = c.route_norm;
        rl.base.ids = ids.get();
        rl.base.weights = w.get();
        rl.n = n;
        expect_ok(launch_router_tokens(rl, nullptr), tname);
        for (int t = 0; t < n; ++t) {
          RouterLaunch one = rl.base;
          one.logits = dl.get() + t * ne;
          one.token = dt.get() + t;
          one.ids = rids.get() + t * k;
          one.weights = rw.get() + t * k;
          expect_ok(launch_router(one, nullptr), tname + " reference");
        }
        expect_sync(tname);
        const std::vector<int32_t> got_ids = ids.host();
        const std::vector<float> got_w = w.host();
        expect_identical(got_ids, rids.host(), k, tname + " ids");
        expect_identical(got_w, rw.host(), k, tname + " weights");
        if (table) continue;
        // CPU reference (experts as a set, weights within tolerance) for the first and last tokens.
        FakeTensor tb(GgmlType::F32, {ne}, bias.data()), tt(GgmlType::I32, {k, kVocab}, tid.data());
        LayerWeights lw;
        lw.hash = hash;
        if (hash) lw.ffn_gate_tid2eid = tt.w; else lw.exp_probs_b = tb.w;
        for (int t : {0, n - 1}) {
          std::vector<int32_t> e(k);
          std::vector<float> wt(k);
          cpu::route_token(c, lw, logits.data() + t * ne, tokens[t], e.data(), wt.data());
          bool same = true;
          for (int i = 0; i < k; ++i) {
            const int j = static_cast<int>(std::find(e.begin(), e.end(), got_ids[t * k + i]) - e.begin());
            if (j == k || std::fabs(got_w[t * k + i] - wt[j]) > 1e-5f * std::fabs(wt[j]) + 1e-7f) {
              same = false;
              std::printf("  %s token %d slot %d: gpu expert %d weight %.9g; cpu experts", tname.c_str(), t, i,
                          got_ids[t * k + i], got_w[t * k + i]);
              for (int q = 0; q < k; ++q) std::printf(" %d:%.9g", e[q], wt[q]);
              std::printf("\n");
            }
          }
          check(same, tname + " token " + std::to_string(t) + ": same experts and weights as the CPU reference");
        }
      }
    }
  }
  RouterTokensLaunch bad;
  bad.base.n_experts = 2000;
  bad.base.n_used = 6;
  bad.n = 1;
  const Status st = launch_router_tokens(bad, nullptr);
  check(!st.ok() && st.message().find("2000") != std::string::npos,
        "router_tokens: too many experts refused, naming the count (got: " + st.message() + ")");
}

// ---------------------------------------------------------------- MoE group / combine

struct GroupResult {
  std::vector<int32_t> offsets, x_rows, slot_of;
  std::vector<float> row_scale;
};

// Host stable counting sort of the (token, slot) pairs by expert.
GroupResult host_group(const std::vector<int32_t>& ids, const std::vector<float>& weights, int n, int k, int ne) {
  const int total = n * k;
  GroupResult r;
  r.offsets.assign(ne + 1, 0);
  r.x_rows.assign(total, -1);
  r.slot_of.assign(total, -1);
  r.row_scale.assign(total, 0.0f);
  auto expert_of = [&](int a) { return (ids[a] >= 0 && ids[a] < ne) ? ids[a] : 0; };
  for (int a = 0; a < total; ++a) ++r.offsets[expert_of(a) + 1];
  for (int e = 0; e < ne; ++e) r.offsets[e + 1] += r.offsets[e];
  std::vector<int32_t> cursor(r.offsets.begin(), r.offsets.end() - 1);
  for (int a = 0; a < total; ++a) {
    const int dst = cursor[expert_of(a)]++;
    r.x_rows[dst] = a / k;
    r.row_scale[dst] = weights[a];
    r.slot_of[a] = dst;
  }
  return r;
}

struct DeviceGroup {
  DeviceVec<int32_t> offsets, x_rows, slot_of;
  DeviceVec<float> row_scale;
  DeviceGroup(int total, int ne) : offsets(ne + 1), x_rows(total), slot_of(total), row_scale(total) {}
};

void run_group_case(const std::string& name, const std::vector<int32_t>& ids, int n, int k, int ne, std::mt19937& rng) {
  const int total = n * k;
  std::vector<float> weights = random_floats(total, rng, 0.0f, 1.5f);
  DeviceVec<int32_t> did(ids);
  DeviceVec<float> dw(weights);
  DeviceGroup g(total, ne);
  // Poison the outputs so that an unwritten entry shows.
  cudaMemset(g.x_rows.get(), 0xff, sizeof(int32_t) * std::max(total, 1));
  cudaMemset(g.slot_of.get(), 0xff, sizeof(int32_t) * std::max(total, 1));
  cudaMemset(g.offsets.get(), 0xff, sizeof(int32_t) * (ne + 1));
  MoeGroupLaunch l;
  l.ids = did.get();
  l.weights = dw.get();
  l.n = n;
  l.k = k;
  l.n_experts = ne;
  l.offsets = g.offsets.get();
  l.x_rows = g.x_rows.get();
  l.row_scale = g.row_scale.get();
  l.slot_of = g.slot_of.get();
  expect_ok(launch_moe_group(l, nullptr), name);
  expect_sync(name);
  const GroupResult want = host_group(ids, weights, n, k, ne);
  expect_identical(g.offsets.host(), want.offsets, ne + 1, name + " offsets");
  std::vector<int32_t> rows = g.x_rows.host(), slots = g.slot_of.host();
  std::vector<float> scales = g.row_scale.host();
  rows.resize(total);
  slots.resize(total);
  scales.resize(total);
  expect_identical(rows, want.x_rows, k, name + " x_rows");
  expect_identical(scales, want.row_scale, k, name + " row_scale");
  expect_identical(slots, want.slot_of, k, name + " slot_of");
  // The permutation on its own: slot_of is a bijection onto [0, total) and each
  // assignment lands inside its expert's range.
  std::vector<int> seen(total, 0);
  int bad = 0;
  for (int a = 0; a < total; ++a) {
    const int s = slots[a];
    const int e = (ids[a] >= 0 && ids[a] < ne) ? ids[a] : 0;
    const bool ok = s >= 0 && s < total && !seen[s]++ && s >= want.offsets[e] && s < want.offsets[e + 1];
    if (!ok && bad++ < 20) std::printf("  %s: assignment %d (expert %d) -> slot %d\n", name.c_str(), a, e, s);
  }
  check(bad == 0, name + ": slot_of is a permutation into each expert's range (" + std::to_string(bad) + " bad)");
}

void test_moe_group(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  const int ne = c.n_experts, k = c.n_experts_used;
  std::uniform_int_distribution<int32_t> any_expert(0, ne - 1);
  for (int n : {1, 5, 300, 2048}) {
    // Uniform: k distinct experts per token, as the router gives.
    std::vector<int32_t> ids(n * k);
    for (int t = 0; t < n; ++t) {
      for (int j = 0; j < k; ++j) {
        int32_t e;
        do e = any_expert(rng); while (std::find(ids.begin() + t * k, ids.begin() + t * k + j, e) != ids.begin() + t * k + j);
        ids[t * k + j] = e;
      }
    }
    run_group_case("moe_group uniform n=" + std::to_string(n), ids, n, k, ne, rng);
    // Skewed: expert 17 in every token, the rest from experts 200..209 (most experts empty,
    // expert 0 and the last expert among the empty ones).
    for (int t = 0; t < n; ++t) {
      for (int j = 0; j < k; ++j) ids[t * k + j] = j == t % k ? 17 : 200 + (t + j) % 10;
    }
    run_group_case("moe_group skewed n=" + std::to_string(n), ids, n, k, ne, rng);
  }
  // Everything on one expert (duplicates inside a token), the last expert.
  {
    const int n = 300;
    std::vector<int32_t> ids(n * k, ne - 1);
    run_group_case("moe_group all on expert 255 n=300", ids, n, k, ne, rng);
  }
  // Out-of-range ids count as expert 0.
  {
    const int n = 5;
    std::vector<int32_t> ids(n * k);
    for (auto& e : ids) e = any_expert(rng);
    ids[3] = -7;
    ids[11] = ne;
    run_group_case("moe_group out-of-range ids n=5", ids, n, k, ne, rng);
  }
  // Other expert counts: the most (fewer pieces in the shared table) and a handful.
  for (int experts : {1024, 7}) {
    const int n = 300;
    std::uniform_int_distribution<int32_t> e_dist(0, experts - 1);
    std::vector<int32_t> ids(n * k);
    for (auto& e : ids) e = e_dist(rng);
    run_group_case("moe_group " + std::to_string(experts) + " experts n=300", ids, n, k, experts, rng);
  }
  // Zero tokens: offsets all zero.
  run_group_case("moe_group n=0", {}, 0, k, ne, rng);
  MoeGroupLaunch bad;
  bad.n = 1;
  bad.k = 6;
  bad.n_experts = 5000;
  const Status st = launch_moe_group(bad, nullptr);
  check(!st.ok() && st.message().find("5000") != std::string::npos,
        "moe_group: too many experts refused, naming the count (got: " + st.message() + ")");
}

void test_moe_combine(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  const int k = c.n_experts_used;
  // dim 4096 takes the float4 kernel, dim 130 the scalar one.
  for (int dim : {c.dim, 130})
  for (int n : kTokenCounts) {
    const int total = n * k;
    std::vector<int32_t> slot_of(total);
    for (int a = 0; a < total; ++a) slot_of[a] = a;
    std::shuffle(slot_of.begin(), slot_of.end(), rng);
    std::vector<float> y = random_floats(static_cast<size_t>(total) * dim, rng, -3.0f, 3.0f);
    for (size_t i = 0; i < y.size(); i += 97) y[i] *= 1e6f;  // cancellation makes the order visible
    std::vector<float> prior = random_floats(static_cast<size_t>(n) * dim, rng);
    DeviceVec<float> dy(y);
    DeviceVec<int32_t> ds(slot_of);
    for (int accumulate = 0; accumulate < 2; ++accumulate) {
      const std::string name = std::string("moe_combine") + (accumulate ? " accumulate" : "") + " dim " +
                               std::to_string(dim) + " n=" + std::to_string(n);
      DeviceVec<float> out(prior);
      expect_ok(launch_moe_combine(dy.get(), ds.get(), n, k, dim, accumulate, out.get(), nullptr), name);
      expect_sync(name);
      std::vector<float> want(static_cast<size_t>(n) * dim);
      for (int t = 0; t < n; ++t) {
        for (int d = 0; d < dim; ++d) {
          float sum = y[static_cast<size_t>(slot_of[t * k]) * dim + d];
          for (int j = 1; j < k; ++j) sum += y[static_cast<size_t>(slot_of[t * k + j]) * dim + d];
          want[static_cast<size_t>(t) * dim + d] = accumulate ? prior[static_cast<size_t>(t) * dim + d] + sum : sum;
        }
      }
      expect_identical(out.host(), want, dim, name);
    }
  }
}

// ---------------------------------------------------------------- row_post rows_per_pos

void test_row_post_positions(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  const int heads = c.n_heads, d = c.head_dim, ring = c.window + 16;
  const cpu::Rope rope(c, true);
  DeviceVec<float> dfreq(rope.freqs());
  std::vector<float> kv_w = random_floats(d, rng, 0.5f, 1.5f);
  DeviceVec<float> dkvw(kv_w);
  for (int n : kTokenCounts) {
    for (int32_t base_pos : {0, 130}) {
      const std::string tag = " n=" + std::to_string(n) + " pos " + std::to_string(base_pos);
      std::vector<int32_t> positions(n);
      for (int t = 0; t < n; ++t) positions[t] = base_pos + t;
      DeviceVec<int32_t> dpos(positions);
      // q-like: n*heads rows, per-head RMSNorm without weight, RoPE.
      {
        const std::string name = "row_post q rows" + tag;
        const int64_t rows = static_cast<int64_t>(n) * heads;
        std::vector<float> x = random_floats(rows * d, rng, -3.0f, 3.0f);
        DeviceVec<float> dx(x), got(rows * d), want(rows * d);
        RowPostLaunch l;
        l.in = dx.get();
        l.out = got.get();
        l.in_stride = l.out_stride = d;
        l.n_rows = static_cast<int>(rows);
        l.d = d;
        l.norm = true;
        l.eps = c.norm_eps;
        l.rope_dim = c.rope_dim;
        l.rope_freqs = dfreq.get();
        l.pos = dpos.get();
        l.rows_per_pos = heads;
        expect_ok(launch_row_post(l, nullptr), name);
        for (int t = 0; t < n; ++t) {
          RowPostLaunch one = l;
          one.rows_per_pos = 0;
          one.n_rows = heads;
          one.in = dx.get() + static_cast<int64_t>(t) * heads * d;
          one.out = want.get() + static_cast<int64_t>(t) * heads * d;
          one.pos = dpos.get() + t;
          expect_ok(launch_row_post(one, nullptr), name + " reference");
        }
        expect_sync(name);
        const std::vector<float> g = got.host();
        expect_identical(g, want.host(), d, name);
        const int t = n - 1;
        for (int h : {0, heads - 1}) {
          const int64_t r = static_cast<int64_t>(t) * heads + h;
          std::vector<float> ref(d);
          cpu::rms_norm(x.data() + r * d, nullptr, d, c.norm_eps, ref.data());
          rope.rotate(ref.data() + d - c.rope_dim, positions[t]);
          expect_close(g.data() + r * d, ref.data(), d, 2e-5, 1e-6, name + " token " + std::to_string(t) + " head " +
                                                                         std::to_string(h));
        }
      }
    }
  }
  // kv-like: n rows, RMSNorm with weight, RoPE, FP8 on the no-rope part, into the ring
  // (pre-filled so that rows written in the wrong slot, or not at all, show); the
  // positions wrap around the ring in the last two cases.
  const std::pair<int, int32_t> kv_cases[] = {{1, 0}, {5, 0}, {5, 141}, {ring, 100}, {ring, 0}};
  for (const auto& [n, base_pos] : kv_cases) {
    const std::string name = "row_post kv ring n=" + std::to_string(n) + " pos " + std::to_string(base_pos);
    std::vector<int32_t> positions(n);
    for (int t = 0; t < n; ++t) positions[t] = base_pos + t;
    DeviceVec<int32_t> dpos(positions);
    std::vector<float> x = random_floats(static_cast<size_t>(n) * d, rng, -3.0f, 3.0f);
    std::vector<float> ring_init = random_floats(static_cast<size_t>(ring) * d, rng);
    DeviceVec<float> dx(x), got(ring_init), want(ring_init);
    RowPostLaunch l;
    l.in = dx.get();
    l.out = got.get();
    l.in_stride = l.out_stride = d;
    l.n_rows = n;
    l.d = d;
    l.norm = true;
    l.norm_weight = dkvw.get();
    l.eps = c.norm_eps;
    l.rope_dim = c.rope_dim;
    l.rope_freqs = dfreq.get();
    l.pos = dpos.get();
    l.qat = RowQat::kFp8Nope;
    l.ring = ring;
    l.rows_per_pos = 1;
    expect_ok(launch_row_post(l, nullptr), name);
    for (int t = 0; t < n; ++t) {
      RowPostLaunch one = l;
      one.rows_per_pos = 0;
      one.n_rows = 1;
      one.in = dx.get() + static_cast<int64_t>(t) * d;
      one.out = want.get();
      one.pos = dpos.get() + t;
      expect_ok(launch_row_post(one, nullptr), name + " reference");
    }
    expect_sync(name);
    expect_identical(got.host(), want.host(), d, name);
  }
  // rows_per_pos = n_rows puts every row at *pos: the single-token path's result.
  {
    const int rows = heads;
    std::vector<float> x = random_floats(static_cast<size_t>(rows) * d, rng, -3.0f, 3.0f);
    DeviceVec<float> dx(x), a(rows * d), b(rows * d);
    DeviceVec<int32_t> dpos(std::vector<int32_t>{70001});
    RowPostLaunch l;
    l.in = dx.get();
    l.out = a.get();
    l.in_stride = l.out_stride = d;
    l.n_rows = rows;
    l.d = d;
    l.norm = true;
    l.rope_dim = c.rope_dim;
    l.rope_freqs = dfreq.get();
    l.pos = dpos.get();
    expect_ok(launch_row_post(l, nullptr), "row_post rows_per_pos 0");
    l.out = b.get();
    l.rows_per_pos = rows;
    expect_ok(launch_row_post(l, nullptr), "row_post rows_per_pos = n_rows");
    expect_sync("row_post rows_per_pos = n_rows");
    expect_identical(b.host(), a.host(), d, "row_post rows_per_pos = n_rows against the single-token path");
  }
  // More positions than ring slots is refused (the rows would collide).
  {
    RowPostLaunch l;
    DeviceVec<int32_t> dpos(1);
    l.n_rows = ring + 1;
    l.d = d;
    l.pos = dpos.get();
    l.ring = ring;
    l.rows_per_pos = 1;
    const Status st = launch_row_post(l, nullptr);
    check(!st.ok() && st.message().find("ring") != std::string::npos,
          "row_post: " + std::to_string(ring + 1) + " positions into a ring of " + std::to_string(ring) +
              " refused (got: " + st.message() + ")");
  }
}

// ---------------------------------------------------------------- row_post paths

// Rows without QAT whose strides allow float4 loads take the warp-per-row kernel; a
// stride that is not a multiple of 4 takes the block-per-row kernel. Both must give the
// same bits (q-like rows without weight, kv-like rows with weight, inverse rotation,
// a row length that is not a multiple of 128, RoPE tail starting mid-float4).
void test_row_post_warp_path(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  const cpu::Rope rope(c, true);
  DeviceVec<float> dfreq(rope.freqs());
  struct Case {
    int d, rope_dim, rows, rows_per_pos;
    bool weight, inverse;
  };
  const Case cases[] = {{c.head_dim, c.rope_dim, 640, c.n_heads, false, false},
                        {c.head_dim, c.rope_dim, 37, 1, true, false},
                        {c.head_dim, c.rope_dim, 64, 8, false, true},
                        {1024, 64, 9, 3, true, false},
                        {132, 6, 50, 5, false, false},
                        {128, 0, 33, 0, true, false}};
  for (const Case& k : cases) {
    const std::string name = "row_post warp path d=" + std::to_string(k.d) + " rope " + std::to_string(k.rope_dim) +
                             " rows " + std::to_string(k.rows) + (k.weight ? " weight" : "") +
                             (k.inverse ? " inverse" : "");
    const int64_t odd = k.d + 2;  // not a multiple of 4: block path
    std::vector<float> x = random_floats(static_cast<size_t>(k.rows) * odd, rng, -3.0f, 3.0f);
    std::vector<float> x4(static_cast<size_t>(k.rows) * k.d);
    for (int r = 0; r < k.rows; ++r) std::memcpy(&x4[static_cast<size_t>(r) * k.d], &x[r * odd], sizeof(float) * k.d);
    std::vector<int32_t> pos{77};
    DeviceVec<int32_t> dpos(pos);
    DeviceVec<float> dx(x), dx4(x4), dw(random_floats(k.d, rng, 0.5f, 1.5f));
    DeviceVec<float> slow(static_cast<size_t>(k.rows) * odd), fast(static_cast<size_t>(k.rows) * k.d);
    RowPostLaunch l;
    l.n_rows = k.rows;
    l.d = k.d;
    l.norm = true;
    l.norm_weight = k.weight ? dw.get() : nullptr;
    l.eps = c.norm_eps;
    l.rope_dim = k.rope_dim;
    l.rope_freqs = dfreq.get();
    l.pos = dpos.get();
    l.inverse = k.inverse;
    l.rows_per_pos = k.rows_per_pos;
    RowPostLaunch a = l;
    a.in = dx.get();
    a.out = slow.get();
    a.in_stride = a.out_stride = odd;
    RowPostLaunch b = l;
    b.in = dx4.get();
    b.out = fast.get();
    b.in_stride = b.out_stride = k.d;
    expect_ok(launch_row_post(a, nullptr), name + " (block path)");
    expect_ok(launch_row_post(b, nullptr), name + " (warp path)");
    expect_sync(name);
    const std::vector<float> s = slow.host();
    std::vector<float> want(x4.size());
    for (int r = 0; r < k.rows; ++r) std::memcpy(&want[static_cast<size_t>(r) * k.d], &s[r * odd], sizeof(float) * k.d);
    expect_identical(fast.host(), want, k.d, name + " against the block path");
  }
}

// ---------------------------------------------------------------- small matmul

struct SmallShape {
  int rows;
  int cols;
  GgmlType type;
  const char* what;
};

std::vector<float> weights_as_floats(const std::vector<uint8_t>& bytes, GgmlType type, size_t count) {
  std::vector<float> w(count);
  for (size_t i = 0; i < count; ++i) {
    if (type == GgmlType::F16) {
      uint16_t h;
      std::memcpy(&h, &bytes[2 * i], 2);
      w[i] = fp16_to_f32(h);
    } else {
      std::memcpy(&w[i], &bytes[4 * i], 4);
    }
  }
  return w;
}

using SmallLaunch = std::function<Status(const DeviceMatrix&, const float*, int64_t, float*, int64_t, int)>;

Status launch_small(const DeviceMatrix& w, const float* x, int64_t xs, float* y, int64_t ys, int n) {
  return launch_small_matmul_tokens(w, x, xs, y, ys, n, nullptr);
}

// Every output against a double-precision sum over the same f32 inputs: the error must
// stay within 1e-6 of sum |w_c x_c| (the scale of the f32 roundings). Also against
// launch_matvec with the same inputs (f32 too), within 2e-6 of that scale. y is filled
// with NaN first (every output must be written) and its padding columns with a sentinel
// (they must stay untouched).
void test_small_matmul_case(const SmallShape& sh, int n, std::mt19937& rng, const std::string& kernel = "small_matmul",
                            const SmallLaunch& launch = launch_small) {
  const std::string name = kernel + " " + sh.what + " " + (sh.type == GgmlType::F16 ? "F16 " : "F32 ") +
                           std::to_string(sh.rows) + " x " + std::to_string(sh.cols) + " n=" + std::to_string(n);
  const int64_t x_stride = sh.cols + 8, y_stride = sh.rows + 3;
  const std::vector<uint8_t> wb = random_blocks(sh.type, sh.rows, sh.cols, rng);
  const std::vector<float> w = weights_as_floats(wb, sh.type, static_cast<size_t>(sh.rows) * sh.cols);
  const std::vector<float> x = random_floats(static_cast<size_t>(n) * x_stride, rng, -2.0f, 2.0f);
  DeviceVec<uint8_t> dw(wb);
  DeviceVec<float> dx(x), dy(static_cast<size_t>(n) * y_stride), dm(static_cast<size_t>(n) * y_stride);
  DeviceMatrix m;
  m.type = sh.type;
  m.rows = sh.rows;
  m.cols = sh.cols;
  m.data = dw.get();
  // NaN in the outputs (each must be written), a sentinel in the padding columns of y
  // (they must stay untouched).
  std::vector<float> sentinel(static_cast<size_t>(n) * y_stride, 12345.0f);
  for (int t = 0; t < n; ++t) {
    for (int r = 0; r < sh.rows; ++r) sentinel[static_cast<size_t>(t) * y_stride + r] = std::nanf("");
  }
  cudaMemcpy(dy.get(), sentinel.data(), sizeof(float) * sentinel.size(), cudaMemcpyHostToDevice);
  expect_ok(launch(m, dx.get(), x_stride, dy.get(), y_stride, n), name);
  MatvecLaunch ml;
  ml.w = &m;
  ml.x = dx.get();
  ml.x_tok_stride = x_stride;
  ml.y = dm.get();
  ml.y_tok_stride = y_stride;
  ml.n_tokens = n;
  // The matrix-vector kernel reads only the column counts of the model's formats
  // (device_matrix_supported); for the odd shapes the double sum is the only reference.
  const bool with_matvec = device_matrix_supported(sh.type, sh.cols);
  if (with_matvec) expect_ok(launch_matvec(ml, nullptr), name + " matvec reference");
  expect_sync(name);
  const std::vector<float> got = dy.host(), mv = dm.host();
  int64_t bad = 0, bad_mv = 0, pad_bad = 0;
  double worst = 0.0, worst_mv = 0.0;
  for (int t = 0; t < n; ++t) {
    for (int r = 0; r < y_stride; ++r) {
      const float g = got[static_cast<size_t>(t) * y_stride + r];
      if (r >= sh.rows) {
        if (g != 12345.0f && pad_bad++ < 5) std::printf("  %s: padding (t %d, col %d) overwritten: %.9g\n", name.c_str(), t, r, g);
        continue;
      }
      double sum = 0.0, mag = 0.0;
      const float* wr = &w[static_cast<size_t>(r) * sh.cols];
      const float* xt = &x[static_cast<size_t>(t) * x_stride];
      for (int c = 0; c < sh.cols; ++c) {
        const double p = static_cast<double>(wr[c]) * xt[c];
        sum += p;
        mag += std::fabs(p);
      }
      const double err = std::fabs(g - sum) / mag;
      const double err_mv = with_matvec ? std::fabs(g - mv[static_cast<size_t>(t) * y_stride + r]) / mag : 0.0;
      worst = std::max(worst, err);
      worst_mv = std::max(worst_mv, err_mv);
      if (!(err <= 1e-6) && bad++ < 10) {
        std::printf("  %s: token %d row %d: double %.12g gpu %.9g (error %.3g of sum|wx| %.6g)\n", name.c_str(), t, r,
                    sum, g, err, mag);
      }
      if (!(err_mv <= 2e-6) && bad_mv++ < 10) {
        std::printf("  %s: token %d row %d: matvec %.9g small_matmul %.9g (difference %.3g of sum|wx| %.6g)\n",
                    name.c_str(), t, r, mv[static_cast<size_t>(t) * y_stride + r], g, err_mv, mag);
      }
    }
  }
  std::printf("  %s: worst error %.3g of sum|wx| (double reference), %.3g (matvec)\n", name.c_str(), worst, worst_mv);
  check(bad == 0, name + ": every output within 1e-6 * sum|wx| of the double reference (" + std::to_string(bad) +
                      " outside)");
  check(bad_mv == 0, name + ": every output within 2e-6 * sum|wx| of launch_matvec (" + std::to_string(bad_mv) +
                         " outside)");
  check(pad_bad == 0, name + ": y columns past the rows untouched (" + std::to_string(pad_bad) + " overwritten)");
}

void test_small_matmul(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  const int hc_cols = c.hc_mult * c.dim, mix_n = (2 + c.hc_mult) * c.hc_mult;
  const SmallShape shapes[] = {{mix_n, hc_cols, GgmlType::F16, "hc_pre fn"},
                               {c.hc_mult, hc_cols, GgmlType::F16, "head fn"},
                               {c.n_experts, c.dim, GgmlType::F16, "gate_inp"},
                               {c.n_experts, c.dim, GgmlType::F32, "gate_inp"},
                               {64, c.dim, GgmlType::F16, "index_proj"},
                               {64, c.dim, GgmlType::F32, "index_proj"},
                               {3, 132, GgmlType::F32, "odd"},
                               {7, 1028, GgmlType::F16, "odd"},
                               {19, 260, GgmlType::F16, "odd"},
                               {45, 4100, GgmlType::F32, "odd"}};
  for (const SmallShape& sh : shapes) {
    for (int n : kTokenCounts) test_small_matmul_case(sh, n, rng);
  }
  // Refusals: a type it does not read, a column count that is not a multiple of 4, an x
  // stride shorter than a row.
  DeviceVec<uint8_t> bytes(4096);
  DeviceVec<float> x(4096), y(4096);
  DeviceMatrix q8;
  q8.type = GgmlType::Q8_0;
  q8.rows = 2;
  q8.cols = 64;
  q8.data = bytes.get();
  Status st = launch_small_matmul_tokens(q8, x.get(), 64, y.get(), 2, 1, nullptr);
  check(!st.ok() && st.message().find("F16 or F32") != std::string::npos,
        "small_matmul refuses a Q8_0 matrix (got: " + st.message() + ")");
  DeviceMatrix odd;
  odd.type = GgmlType::F16;
  odd.rows = 2;
  odd.cols = 6;
  odd.data = bytes.get();
  st = launch_small_matmul_tokens(odd, x.get(), 8, y.get(), 2, 1, nullptr);
  check(!st.ok() && st.message().find("multiple of 4") != std::string::npos,
        "small_matmul refuses 6 columns (got: " + st.message() + ")");
  DeviceMatrix f32;
  f32.type = GgmlType::F32;
  f32.rows = 2;
  f32.cols = 64;
  f32.data = bytes.get();
  st = launch_small_matmul_tokens(f32, x.get(), 60, y.get(), 2, 1, nullptr);
  check(!st.ok() && st.message().find("stride") != std::string::npos,
        "small_matmul refuses an x stride shorter than a row (got: " + st.message() + ")");
}

// launch_tiled_matmul_tokens: the prefill's shapes (HC mixing 24 x 16384, output HC head
// 4 x 16384, router 256 x 4096, indexer weights 64 x 4096) with F16 and F32 weights for
// n = 5, 17, 64, 2048, odd shapes (row tiles cut short, columns not a multiple of the
// column tile), forced split counts, a bit-identical repeat, and the refusals.
void test_tiled_matmul(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  const int hc_cols = c.hc_mult * c.dim, mix_n = (2 + c.hc_mult) * c.hc_mult;
  auto tiled = [](int splits) {
    return [splits](const DeviceMatrix& w, const float* x, int64_t xs, float* y, int64_t ys, int n) {
      return launch_tiled_matmul_tokens(w, x, xs, y, ys, n, nullptr, splits);
    };
  };
  for (GgmlType type : {GgmlType::F16, GgmlType::F32}) {
    const SmallShape shapes[] = {{mix_n, hc_cols, type, "hc_pre fn"},
                                 {c.hc_mult, hc_cols, type, "head fn"},
                                 {c.n_experts, c.dim, type, "gate_inp"},
                                 {64, c.dim, type, "index_proj"}};
    for (const SmallShape& sh : shapes) {
      for (int n : {5, 17, 64, 2048}) test_small_matmul_case(sh, n, rng, "tiled", tiled(0));
    }
  }
  const SmallShape odd[] = {{3, 132, GgmlType::F32, "odd"},   {7, 1028, GgmlType::F16, "odd"},
                            {19, 260, GgmlType::F16, "odd"},  {45, 4100, GgmlType::F32, "odd"},
                            {100, 4096, GgmlType::F16, "odd"}, {30, 16384, GgmlType::F16, "odd"}};
  for (const SmallShape& sh : odd) {
    for (int n : {1, 5, 130}) test_small_matmul_case(sh, n, rng, "tiled", tiled(0));
  }
  // Forced split counts (1: no cluster; 3: an odd cluster; 8: the largest).
  for (int splits : {1, 2, 3, 8}) {
    test_small_matmul_case({mix_n, hc_cols, GgmlType::F16, "hc_pre fn"}, 300, rng,
                           "tiled splits=" + std::to_string(splits), tiled(splits));
    test_small_matmul_case({c.n_experts, c.dim, GgmlType::F16, "gate_inp"}, 200, rng,
                           "tiled splits=" + std::to_string(splits), tiled(splits));
  }
  // Repeat: the same inputs give the same bits.
  {
    const int n = 700;
    const std::vector<uint8_t> wb = random_blocks(GgmlType::F16, c.n_experts, c.dim, rng);
    DeviceVec<uint8_t> dw(wb);
    DeviceVec<float> dx(random_floats(static_cast<size_t>(n) * c.dim, rng, -2.0f, 2.0f));
    DeviceVec<float> y1(static_cast<size_t>(n) * c.n_experts), y2(static_cast<size_t>(n) * c.n_experts);
    DeviceMatrix m;
    m.type = GgmlType::F16;
    m.rows = c.n_experts;
    m.cols = c.dim;
    m.data = dw.get();
    expect_ok(launch_tiled_matmul_tokens(m, dx.get(), c.dim, y1.get(), c.n_experts, n, nullptr), "tiled repeat 1");
    expect_ok(launch_tiled_matmul_tokens(m, dx.get(), c.dim, y2.get(), c.n_experts, n, nullptr), "tiled repeat 2");
    expect_sync("tiled repeat");
    expect_identical(y1.host(), y2.host(), c.n_experts, "tiled gate_inp n=700 repeated");
  }
  // Refusals: the small kernel's (type, columns, stride) and a split count above 8.
  DeviceVec<uint8_t> bytes(4096);
  DeviceVec<float> x(4096), y(4096);
  DeviceMatrix q8;
  q8.type = GgmlType::Q8_0;
  q8.rows = 2;
  q8.cols = 64;
  q8.data = bytes.get();
  Status st = launch_tiled_matmul_tokens(q8, x.get(), 64, y.get(), 2, 1, nullptr);
  check(!st.ok() && st.message().find("F16 or F32") != std::string::npos,
        "tiled_matmul refuses a Q8_0 matrix (got: " + st.message() + ")");
  DeviceMatrix f32 = q8;
  f32.type = GgmlType::F32;
  st = launch_tiled_matmul_tokens(f32, x.get(), 60, y.get(), 2, 1, nullptr);
  check(!st.ok() && st.message().find("stride") != std::string::npos,
        "tiled_matmul refuses an x stride shorter than a row (got: " + st.message() + ")");
  f32.cols = 6;
  st = launch_tiled_matmul_tokens(f32, x.get(), 8, y.get(), 2, 1, nullptr);
  check(!st.ok() && st.message().find("multiple of 4") != std::string::npos,
        "tiled_matmul refuses 6 columns (got: " + st.message() + ")");
  f32.cols = 64;
  st = launch_tiled_matmul_tokens(f32, x.get(), 64, y.get(), 2, 1, nullptr, 9);
  check(!st.ok() && st.message().find("split count") != std::string::npos,
        "tiled_matmul refuses 9 splits (got: " + st.message() + ")");
}

// ---------------------------------------------------------------- timings

bool cluster_capable() {
  int device = 0, major = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  return major >= 9;
}

double time_us(const std::function<Status()>& launch) {
  for (int i = 0; i < 3; ++i) launch();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  constexpr int kIters = 20;
  cudaEventRecord(a);
  for (int i = 0; i < kIters; ++i) launch();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1000.0 * ms / kIters;
}

void report(const char* what, const std::function<Status()>& launch) {
  const Status st = launch();
  expect_ok(st, std::string("timing launch ") + what);
  if (!st.ok()) return;
  std::printf("TIME n=2048 %-40s %10.1f us\n", what, time_us(launch));
}

void time_launches(std::mt19937& rng) {
  const ModelConfig c = deepseek_v4_flash_config();
  const HcShape s = real_hc_shape();
  const int n = 2048, m = s.mult, mix_n = (2 + m) * m, ne = c.n_experts, k = c.n_experts_used;
  const int64_t state = static_cast<int64_t>(m) * s.dim;
  std::vector<uint8_t> embd = random_blocks(GgmlType::F16, kVocab, s.dim, rng);
  DeviceVec<uint8_t> de(embd);
  DeviceVec<int32_t> tokens(random_tokens(n, rng));
  DeviceVec<float> x(random_floats(n * state, rng)), x2(n * state), mix(random_floats(n * mix_n, rng));
  DeviceVec<float> scale(std::vector<float>{0.7f, 1.3f, 2.1f}), base(random_floats(mix_n, rng, -0.5f, 0.5f));
  DeviceVec<float> norm_w(random_floats(s.dim, rng, 0.5f, 1.5f)), post(n * m), comb(n * m * m), out(n * s.dim);
  report("hc_embed_tokens (F16)", [&] { return launch_hc_embed_tokens(de.get(), GgmlType::F16, tokens.get(), n, s, x2.get(), nullptr); });
  report("hc_pre_tokens", [&] {
    return launch_hc_pre_tokens(x.get(), mix.get(), scale.get(), base.get(), norm_w.get(), s, n, post.get(), comb.get(),
                                out.get(), nullptr);
  });
  report("hc_post_tokens", [&] {
    return launch_hc_post_tokens(x.get(), out.get(), post.get(), comb.get(), s, n, x2.get(), nullptr);
  });
  DeviceVec<float> logits(random_floats(static_cast<size_t>(n) * ne, rng, -4.0f, 4.0f)), bias(random_floats(ne, rng, -0.2f, 0.2f));
  std::vector<int32_t> tid(static_cast<size_t>(kVocab) * k);
  for (size_t i = 0; i < tid.size(); ++i) tid[i] = static_cast<int32_t>(rng() % ne);
  DeviceVec<int32_t> dtid(tid), ids(n * k);
  DeviceVec<float> wts(n * k);
  RouterTokensLaunch rl;
  rl.base.logits = logits.get();
  rl.base.n_experts = ne;
  rl.base.n_used = k;
  rl.base.bias = bias.get();
  rl.base.token = tokens.get();
  rl.base.route_scale = c.route_scale;
  rl.base.ids = ids.get();
  rl.base.weights = wts.get();
  rl.n = n;
  report("router_tokens (top-k)", [&] { return launch_router_tokens(rl, nullptr); });
  RouterTokensLaunch hl = rl;
  hl.base.bias = nullptr;
  hl.base.tid2eid = dtid.get();
  report("router_tokens (hash)", [&] { return launch_router_tokens(hl, nullptr); });
  launch_router_tokens(rl, nullptr);  // top-k ids for the grouping
  const int total = n * k;
  DeviceGroup g(total, ne);
  MoeGroupLaunch gl;
  gl.ids = ids.get();
  gl.weights = wts.get();
  gl.n = n;
  gl.k = k;
  gl.n_experts = ne;
  gl.offsets = g.offsets.get();
  gl.x_rows = g.x_rows.get();
  gl.row_scale = g.row_scale.get();
  gl.slot_of = g.slot_of.get();
  report("moe_group (256 experts, k 6)", [&] { return launch_moe_group(gl, nullptr); });
  DeviceVec<float> y(random_floats(static_cast<size_t>(total) * s.dim, rng));
  report("moe_combine (dim 4096, k 6)", [&] {
    return launch_moe_combine(y.get(), g.slot_of.get(), n, k, s.dim, false, out.get(), nullptr);
  });
  report("moe_combine accumulate", [&] {
    return launch_moe_combine(y.get(), g.slot_of.get(), n, k, s.dim, true, out.get(), nullptr);
  });
  const cpu::Rope rope(c, true);
  DeviceVec<float> dfreq(rope.freqs());
  std::vector<int32_t> positions(n);
  for (int t = 0; t < n; ++t) positions[t] = 5000 + t;
  DeviceVec<int32_t> dpos(positions);
  const int64_t qrows = static_cast<int64_t>(n) * c.n_heads;
  DeviceVec<float> q(random_floats(qrows * c.head_dim, rng));
  RowPostLaunch ql;
  ql.in = ql.out = q.get();
  ql.in_stride = ql.out_stride = c.head_dim;
  ql.n_rows = static_cast<int>(qrows);
  ql.d = c.head_dim;
  ql.norm = true;
  ql.rope_dim = c.rope_dim;
  ql.rope_freqs = dfreq.get();
  ql.pos = dpos.get();
  ql.rows_per_pos = c.n_heads;
  report("row_post q (2048 x 64 rows of 512)", [&] { return launch_row_post(ql, nullptr); });
  DeviceVec<float> kv(random_floats(static_cast<size_t>(n) * c.head_dim, rng)), kv_out(static_cast<size_t>(n) * c.head_dim);
  RowPostLaunch kl = ql;
  kl.in = kv.get();
  kl.out = kv_out.get();
  kl.n_rows = n;
  kl.norm_weight = norm_w.get();
  kl.qat = RowQat::kFp8Nope;
  kl.rows_per_pos = 1;
  report("row_post kv (2048 rows, FP8)", [&] { return launch_row_post(kl, nullptr); });
  expect_sync("timed launches");
  // The small projections over 2048 tokens, against launch_matvec with n_tokens = n.
  const int mix_rows = mix_n;
  const SmallShape small[] = {{mix_rows, static_cast<int>(state), GgmlType::F16, "hc_pre fn"},
                              {m, static_cast<int>(state), GgmlType::F16, "head fn"},
                              {ne, s.dim, GgmlType::F16, "gate_inp F16"},
                              {ne, s.dim, GgmlType::F32, "gate_inp F32"},
                              {64, s.dim, GgmlType::F16, "index_proj"},
                              {64, s.dim, GgmlType::F32, "index_proj F32"}};
  for (const SmallShape& sh : small) {
    DeviceVec<uint8_t> wb(random_blocks(sh.type, sh.rows, sh.cols, rng));
    DeviceMatrix mat;
    mat.type = sh.type;
    mat.rows = sh.rows;
    mat.cols = sh.cols;
    mat.data = wb.get();
    DeviceVec<float> xs(random_floats(static_cast<size_t>(n) * sh.cols, rng)), ys(static_cast<size_t>(n) * sh.rows);
    const std::string label = std::string(sh.what) + " " + std::to_string(sh.rows) + "x" + std::to_string(sh.cols);
    report(("small_matmul " + label).c_str(), [&] {
      return launch_small_matmul_tokens(mat, xs.get(), sh.cols, ys.get(), sh.rows, n, nullptr);
    });
    MatvecLaunch ml;
    ml.w = &mat;
    ml.x = xs.get();
    ml.x_tok_stride = sh.cols;
    ml.y = ys.get();
    ml.y_tok_stride = sh.rows;
    ml.n_tokens = n;
    report(("matvec n_tokens " + label).c_str(), [&] { return launch_matvec(ml, nullptr); });
    const Result<int> auto_splits = tiled_matmul_tokens_splits(mat, n);
    const Result<int> most_splits = tiled_matmul_tokens_splits(mat, n, 8);
    std::printf("     (tiled %s: %d column splits chosen, at most %d)\n", label.c_str(),
                auto_splits.ok() ? auto_splits.value() : -1, most_splits.ok() ? most_splits.value() : -1);
    if (cluster_capable()) {
      check(most_splits.ok() && most_splits.value() >= 2,
            "tiled " + label + ": the device forms clusters of split blocks (got at most " +
                std::to_string(most_splits.ok() ? most_splits.value() : -1) + " splits)");
    }
    report(("tiled " + label).c_str(), [&] {
      return launch_tiled_matmul_tokens(mat, xs.get(), sh.cols, ys.get(), sh.rows, n, nullptr);
    });
    for (int splits = 1; splits <= 8; splits *= 2) {
      report(("tiled splits=" + std::to_string(splits) + " " + label).c_str(), [&] {
        return launch_tiled_matmul_tokens(mat, xs.get(), sh.cols, ys.get(), sh.rows, n, nullptr, splits);
      });
    }
    const double bytes = static_cast<double>(n) * sh.cols * 4 + static_cast<double>(sh.rows) * sh.cols * (sh.type == GgmlType::F16 ? 2 : 4) +
                         static_cast<double>(n) * sh.rows * 4;
    std::printf("     (%s: %.1f MB of x, w and y: %.1f us at 4.5 TB/s)\n", label.c_str(), bytes / 1e6, bytes / 4.5e6);
  }
  expect_sync("timed small matmuls");
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  std::mt19937 rng(20260601);
  test_embed(rng);
  test_hyper_connections(rng);
  test_router(rng);
  test_moe_group(rng);
  test_moe_combine(rng);
  test_row_post_positions(rng);
  test_row_post_warp_path(rng);
  test_small_matmul(rng);
  test_tiled_matmul(rng);
  time_launches(rng);
  return finish("prefill_ops_test");
}
