// Quantized matrix-vector kernels (cuda/matvec.h) against the CPU reference dot
// product (format/quant.h dot_row) on fresh random valid blocks, for every weight
// type, several token counts, expert slots with the fused SwiGLU, the down
// projection summed over experts, and grouped row slots; every output element is
// compared. The tuning options (MatvecLaunch::lanes_per_row, iq2xxs_lane_tables) are
// checked the same way. Then micro-benchmarks: GB/s of each type against the measured
// read bandwidth, and the routed-expert launches of one decode token, by default and
// with each tuning option (the lines name the option). The column-tile kernel
// (tile_kernel, tile_partials_only with the fused hc_pre / hc_head) is checked against
// the CPU reference and the unfused path, and timed on the one-token decode shapes.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "cpu/moe.h"
#include "cpu/vector_ops.h"
#include "cuda/bandwidth.h"
#include "cuda/device_model.h"
#include "cuda/hyper_connections.h"
#include "cuda/matvec.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

struct HostMatrix {
  GgmlType type;
  int64_t cols, rows, count;
  std::vector<uint8_t> bytes;
  const uint8_t* row(int64_t global_row) const { return bytes.data() + global_row * ggml_row_bytes(type, cols); }
};

HostMatrix make_host(GgmlType type, int64_t cols, int64_t rows, int64_t count, std::mt19937& rng) {
  return {type, cols, rows, count, random_blocks(type, rows * count, cols, rng)};
}

// The x values the kernel computes with: x itself, or, for launches with
// int8_activations on an int8-capable type, the rounded values. The references
// below use these, so the tolerance stays the f32 one: the int8 products are exact and
// only the per-chunk scaling and the summation order differ from the CPU (the rounding
// of x itself, up to amax/254 per value, is the opt-in path's design error and is
// measured against the goldens, not hidden in a loose tolerance here).
std::vector<float> kernel_x(GgmlType type, const float* x, int64_t n, bool int8) {
  std::vector<float> out(x, x + n);
  if (int8 && matvec_int8_capable(type)) matvec_round_activations(x, n, out.data());
  return out;
}

// |a - b| <= 2e-5 * sum_i |w_i x_i| + 1e-6: f32 accumulation in another order.
bool close(float gpu, double cpu, double abs_sum) {
  return std::fabs(gpu - cpu) <= 2e-5 * abs_sum + 1e-6;
}

double abs_dot(GgmlType type, const uint8_t* row, const float* x, int64_t n) {
  std::vector<float> w(n);
  dequantize_row(type, row, w.data(), n);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::fabs(static_cast<double>(w[i]) * x[i]);
  return s;
}

// x_pad: floats before the first token and between tokens, so that x is not 16-byte
// aligned (the kernel then stages x with 4-byte loads instead of 16-byte ones).
// lanes_per_row: MatvecLaunch::lanes_per_row (0: the launch chooses).
void test_plain(GgmlType type, int64_t cols, int64_t rows, int n_tokens, std::mt19937& rng, bool int8 = false,
                int x_pad = 0, int lanes_per_row = 0, bool lane_tables = false, bool prefetch = false) {
  const std::string name = std::string(ggml_type_name(type)) + " " + std::to_string(rows) + "x" +
                           std::to_string(cols) + " tokens=" + std::to_string(n_tokens) + (int8 ? " int8 x" : "") +
                           (x_pad ? " unaligned x" : "") +
                           (lanes_per_row ? " lanes/row=" + std::to_string(lanes_per_row) : "") +
                           (lane_tables ? " lane tables" : "") + (prefetch ? " prefetch" : "");
  HostMatrix h = make_host(type, cols, rows, 1, rng);
  auto dm = upload_matrix(type, cols, rows, 1, h.bytes.data());
  check(dm.ok(), name + ": upload: " + dm.status().message());
  if (!dm.ok()) return;
  std::vector<float> x = random_floats(static_cast<size_t>(cols) * n_tokens, rng);
  std::vector<float> x_padded(static_cast<size_t>(cols + x_pad) * n_tokens + x_pad, 7.0f);
  for (int t = 0; t < n_tokens; ++t) {
    std::copy(x.begin() + t * cols, x.begin() + (t + 1) * cols, x_padded.begin() + x_pad + t * (cols + x_pad));
  }
  DeviceVec<float> dx(x_padded), dy(static_cast<size_t>(rows) * n_tokens), dsplit(32 * 4096);
  MatvecLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get() + x_pad;
  l.x_tok_stride = cols + x_pad;
  l.y = dy.get();
  l.y_tok_stride = rows;
  l.n_tokens = n_tokens;
  l.int8_activations = int8;
  l.lanes_per_row = lanes_per_row;
  l.iq2xxs_lane_tables = lane_tables;
  l.prefetch_next = prefetch;
  if (n_tokens == 1) {  // long rows over several blocks (split sums) where rows are few
    l.split_workspace = dsplit.get();
    l.split_workspace_floats = 32 * 4096;
  }
  Status s = launch_matvec(l, nullptr);
  check(s.ok(), name + ": launch: " + s.message());
  check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernel failed");
  std::vector<float> y = dy.host();
  int bad = 0;
  for (int t = 0; t < n_tokens; ++t) {
    const std::vector<float> xk = kernel_x(type, x.data() + t * cols, cols, int8);
    const float* xt = xk.data();
    for (int64_t r = 0; r < rows; ++r) {
      const double ref = dot_row(type, h.row(r), xt, cols);
      if (!close(y[t * rows + r], ref, abs_dot(type, h.row(r), xt, cols))) {
        if (bad++ < 3) std::printf("  %s: token %d row %lld gpu %.7g cpu %.7g\n", name.c_str(), t,
                                   static_cast<long long>(r), y[t * rows + r], ref);
      }
    }
  }
  check(bad == 0, name + ": " + std::to_string(bad) + " outputs differ");
}

// Experts: gate/up paired with SwiGLU and per-slot weights, then down summed over slots.
void test_experts(GgmlType gate_type, GgmlType down_type, int64_t dim, int64_t ffn, int n_exp,
                  std::mt19937& rng, bool int8 = false, int lanes_per_row = 0, bool lane_tables = false,
                  bool prefetch = false) {
  const std::string name = "experts " + std::string(ggml_type_name(gate_type)) + "/" +
                           std::string(ggml_type_name(down_type)) + (int8 ? " int8 x" : "") +
                           (lanes_per_row ? " lanes/row=" + std::to_string(lanes_per_row) : "") +
                           (lane_tables ? " lane tables" : "") + (prefetch ? " prefetch" : "");
  const int used = 3;
  HostMatrix g = make_host(gate_type, dim, ffn, n_exp, rng);
  HostMatrix u = make_host(gate_type, dim, ffn, n_exp, rng);
  HostMatrix d = make_host(down_type, ffn, dim, n_exp, rng);
  auto dg = upload_matrix(gate_type, dim, ffn, n_exp, g.bytes.data());
  auto du = upload_matrix(gate_type, dim, ffn, n_exp, u.bytes.data());
  auto dd = upload_matrix(down_type, ffn, dim, n_exp, d.bytes.data());
  check(dg.ok() && du.ok() && dd.ok(), name + ": upload");
  if (!dg.ok() || !du.ok() || !dd.ok()) return;
  const std::vector<int32_t> ids = {n_exp - 1, 0, n_exp / 2};
  const std::vector<float> weights = {0.7f, 0.2f, 0.6f};
  std::vector<float> x = random_floats(dim, rng, -3.0f, 3.0f);
  DeviceVec<float> dx(x), dh(used * ffn), dy(dim), dw(weights);
  DeviceVec<int32_t> dids(ids);
  const float limit = 0.05f;  // small enough that the clamp is exercised
  MatvecLaunch gu;
  gu.w = &(*dg)->m;
  gu.w_up = &(*du)->m;
  gu.x = dx.get();
  gu.y = dh.get();
  gu.y_slot_stride = ffn;
  gu.n_slots = used;
  gu.slot_matrix = dids.get();
  gu.slot_weight = dw.get();
  gu.swiglu_limit = limit;
  gu.int8_activations = int8;
  gu.lanes_per_row = lanes_per_row;
  gu.iq2xxs_lane_tables = lane_tables;
  check(launch_matvec(gu, nullptr).ok(), name + ": gate/up launch");
  MatvecLaunch dn;
  dn.w = &(*dd)->m;
  dn.x = dh.get();
  dn.x_slot_stride = ffn;
  dn.y = dy.get();
  dn.n_slots = used;
  dn.slot_matrix = dids.get();
  dn.sum_slots = true;
  dn.int8_activations = int8;
  dn.lanes_per_row = lanes_per_row;
  dn.iq2xxs_lane_tables = lane_tables;
  dn.prefetch_next = prefetch;
  check(launch_matvec(dn, nullptr).ok(), name + ": down launch");
  check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernel failed");
  std::vector<float> h = dh.host(), y = dy.host();
  // CPU: per slot gate/up dots -> clamped SwiGLU * weight.
  std::vector<float> href(used * ffn);
  const std::vector<float> xk = kernel_x(gate_type, x.data(), dim, int8);
  int bad_h = 0, clamped = 0;
  for (int s = 0; s < used; ++s) {
    std::vector<float> gv(ffn), uv(ffn), hv(ffn);
    for (int64_t r = 0; r < ffn; ++r) {
      gv[r] = dot_row(gate_type, g.row(ids[s] * ffn + r), xk.data(), dim);
      uv[r] = dot_row(gate_type, u.row(ids[s] * ffn + r), xk.data(), dim);
      clamped += std::fabs(uv[r]) > limit;
    }
    cpu::clamped_swiglu(gv.data(), uv.data(), ffn, limit, hv.data());
    for (int64_t r = 0; r < ffn; ++r) {
      href[s * ffn + r] = hv[r] * weights[s];
      const double tol = 1e-4 * std::fabs(href[s * ffn + r]) + 1e-6;
      if (std::fabs(h[s * ffn + r] - href[s * ffn + r]) > tol && bad_h++ < 3) {
        std::printf("  %s: slot %d row %lld gpu %.7g cpu %.7g\n", name.c_str(), s, static_cast<long long>(r),
                    h[s * ffn + r], href[s * ffn + r]);
      }
    }
  }
  check(clamped > 0, name + ": the clamp was exercised");
  check(bad_h == 0, name + ": " + std::to_string(bad_h) + " SwiGLU outputs differ");
  int bad_y = 0;
  const std::vector<float> hk = kernel_x(down_type, h.data(), used * ffn, int8);  // GPU SwiGLU as the input
  for (int64_t r = 0; r < dim; ++r) {
    double ref = 0, abs_sum = 0;
    for (int s = 0; s < used; ++s) {
      const uint8_t* row = d.row(ids[s] * dim + r);
      ref += dot_row(down_type, row, hk.data() + s * ffn, ffn);
      abs_sum += abs_dot(down_type, row, hk.data() + s * ffn, ffn);
    }
    if (!close(y[r], ref, abs_sum) && bad_y++ < 3) {
      std::printf("  %s: down row %lld gpu %.7g cpu %.7g\n", name.c_str(), static_cast<long long>(r), y[r], ref);
    }
  }
  check(bad_y == 0, name + ": " + std::to_string(bad_y) + " summed down outputs differ");
}

// Grouped output projection: slot g uses rows g*rows_per_group.. and its own x slice.
void test_grouped(std::mt19937& rng) {
  const int groups = 4;
  const int64_t cols = 256, per = 96;
  HostMatrix h = make_host(GgmlType::Q8_0, cols, groups * per, 1, rng);
  auto dm = upload_matrix(GgmlType::Q8_0, cols, groups * per, 1, h.bytes.data());
  check(dm.ok(), "grouped: upload");
  if (!dm.ok()) return;
  std::vector<float> x = random_floats(groups * cols, rng);
  DeviceVec<float> dx(x), dy(groups * per);
  MatvecLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get();
  l.x_slot_stride = cols;
  l.y = dy.get();
  l.y_slot_stride = per;
  l.n_slots = groups;
  l.n_rows = per;
  l.slot_row_stride = per;
  check(launch_matvec(l, nullptr).ok(), "grouped: launch");
  cudaDeviceSynchronize();
  std::vector<float> y = dy.host();
  int bad = 0;
  for (int g = 0; g < groups; ++g) {
    for (int64_t r = 0; r < per; ++r) {
      const uint8_t* row = h.row(g * per + r);
      const float* xg = x.data() + g * cols;
      if (!close(y[g * per + r], dot_row(GgmlType::Q8_0, row, xg, cols), abs_dot(GgmlType::Q8_0, row, xg, cols))) ++bad;
    }
  }
  check(bad == 0, "grouped: " + std::to_string(bad) + " outputs differ");
}

// x RMS-normalised with a learned weight as it is loaded (the q LoRA norm).
void test_x_norm(GgmlType type, std::mt19937& rng) {
  const int64_t cols = 1024, rows = 300;
  const std::string name = std::string("x-norm ") + std::string(ggml_type_name(type));
  HostMatrix h = make_host(type, cols, rows, 1, rng);
  auto dm = upload_matrix(type, cols, rows, 1, h.bytes.data());
  check(dm.ok(), name + ": upload");
  if (!dm.ok()) return;
  std::vector<float> x = random_floats(cols, rng, -5.0f, 5.0f), g = random_floats(cols, rng, 0.5f, 1.5f);
  DeviceVec<float> dx(x), dg(g), dy(rows);
  MatvecLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get();
  l.y = dy.get();
  l.x_norm_weight = dg.get();
  l.x_norm_eps = 1e-6f;
  check(launch_matvec(l, nullptr).ok(), name + ": launch");
  cudaDeviceSynchronize();
  std::vector<float> xn(cols), y = dy.host();
  cpu::rms_norm(x.data(), g.data(), cols, 1e-6f, xn.data());
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!close(y[r], dot_row(type, h.row(r), xn.data(), cols), abs_dot(type, h.row(r), xn.data(), cols))) ++bad;
  }
  check(bad == 0, name + ": " + std::to_string(bad) + " outputs differ");
}

// The column-tile kernel (MatvecLaunch::tile_kernel: 1 forced, 0 chosen by the launch,
// -1 the row kernels): `slots` row groups of one matrix (each its own x and y slice),
// every output against the CPU reference, `accumulate` adding onto a known y, and a
// second launch that must give the same bits (fixed summation order).
// workspace_floats: 0 gives no workspace (the plan then keeps whole rows per tile).
void test_tile(GgmlType type, int64_t cols, int64_t rows, int slots, int mode, int64_t workspace_floats,
               bool accumulate, std::mt19937& rng, bool x_norm = false, int chunks_per_lane = 0) {
  const std::string name = std::string("tile ") + std::string(ggml_type_name(type)) + " " + std::to_string(slots) +
                           "x" + std::to_string(rows) + "x" + std::to_string(cols) + " mode=" + std::to_string(mode) +
                           " workspace=" + std::to_string(workspace_floats) + (accumulate ? " accumulate" : "") +
                           (x_norm ? " x-norm" : "") +
                           (chunks_per_lane ? " chunks/lane=" + std::to_string(chunks_per_lane) : "");
  HostMatrix h = make_host(type, cols, rows * slots, 1, rng);
  auto dm = upload_matrix(type, cols, rows * slots, 1, h.bytes.data());
  check(dm.ok(), name + ": upload: " + (dm.ok() ? std::string() : dm.status().message()));
  if (!dm.ok()) return;
  std::vector<float> x = random_floats(static_cast<size_t>(cols) * slots, rng, -2.0f, 2.0f);
  std::vector<float> g = random_floats(static_cast<size_t>(cols), rng, 0.5f, 1.5f);
  std::vector<float> y0 = random_floats(static_cast<size_t>(rows) * slots, rng);
  DeviceVec<float> dx(x), dg(g), dy(y0), dws(static_cast<size_t>(std::max<int64_t>(workspace_floats, 1)));
  MatvecLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get();
  l.x_slot_stride = cols;
  l.y = dy.get();
  l.y_slot_stride = rows;
  l.n_slots = slots;
  l.n_rows = rows;
  l.slot_row_stride = rows;
  l.accumulate = accumulate;
  l.tile_kernel = mode;
  l.tile_chunks_per_lane = chunks_per_lane;
  if (x_norm) l.x_norm_weight = dg.get();
  if (workspace_floats > 0) {
    l.split_workspace = dws.get();
    l.split_workspace_floats = workspace_floats;
  }
  Status s = launch_matvec(l, nullptr);
  check(s.ok(), name + ": launch: " + s.message());
  check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernel failed");
  const std::vector<float> y = dy.host();
  std::vector<float> xs(x);
  if (x_norm) cpu::rms_norm(x.data(), g.data(), cols, 1e-6f, xs.data());
  int bad = 0;
  for (int sl = 0; sl < slots; ++sl) {
    const float* xt = xs.data() + sl * cols;
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row = h.row(sl * rows + r);
      const size_t i = static_cast<size_t>(sl * rows + r);
      const double ref = dot_row(type, row, xt, cols) + (accumulate ? y0[i] : 0.0);
      if (!close(y[i], ref, abs_dot(type, row, xt, cols) + (accumulate ? std::fabs(y0[i]) : 0.0))) {
        if (bad++ < 3) {
          std::printf("  %s: slot %d row %lld gpu %.7g cpu %.7g\n", name.c_str(), sl, static_cast<long long>(r), y[i],
                      ref);
        }
      }
    }
  }
  check(bad == 0, name + ": " + std::to_string(bad) + " outputs differ");
  // Same launch again from the same y: bit-identical.
  cudaMemcpy(dy.get(), y0.data(), y0.size() * sizeof(float), cudaMemcpyHostToDevice);
  s = launch_matvec(l, nullptr);
  check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, name + ": second launch: " + s.message());
  const std::vector<float> y2 = dy.host();
  int diff = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (std::memcmp(&y[i], &y2[i], sizeof(float)) != 0 && diff++ < 3) {
      std::printf("  %s: output %zu first %.9g second %.9g\n", name.c_str(), i, y[i], y2[i]);
    }
  }
  check(diff == 0, name + ": " + std::to_string(diff) + " outputs differ between two launches");
}

// The enable flag at 0: neither the tile kernel nor its reduction writes y.
void test_tile_disabled(std::mt19937& rng) {
  const int64_t cols = 16384, rows = 24;
  HostMatrix h = make_host(GgmlType::F16, cols, rows, 1, rng);
  auto dm = upload_matrix(GgmlType::F16, cols, rows, 1, h.bytes.data());
  check(dm.ok(), "tile disabled: upload");
  if (!dm.ok()) return;
  std::vector<float> x = random_floats(cols, rng), y0(rows, 3.25f);
  const std::vector<int32_t> zero{0};
  DeviceVec<float> dx(x), dy(y0), dws(32 * 4096);
  DeviceVec<int32_t> den(zero);
  MatvecLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get();
  l.y = dy.get();
  l.split_workspace = dws.get();
  l.split_workspace_floats = 32 * 4096;
  l.enable = den.get();
  l.tile_kernel = 1;
  const Status s = launch_matvec(l, nullptr);
  check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, "tile disabled: launch: " + s.message());
  const std::vector<float> y = dy.host();
  int changed = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (y[r] != 3.25f && changed++ < 3) std::printf("  tile disabled: row %lld is %.7g, expected 3.25\n",
                                                    static_cast<long long>(r), y[r]);
  }
  check(changed == 0, "tile disabled: " + std::to_string(changed) + " outputs written");
}

// The hc mixing projections with their tile reduction fused into hc_pre / hc_head
// (MatvecLaunch::tile_partials_only, launch_hc_*_partials): the same bits as the
// matvec's own reduction followed by launch_hc_pre / launch_hc_head.
void test_hc_fused(int mult, bool head, std::mt19937& rng) {
  HcShape hs;
  hs.dim = 4096;
  hs.mult = mult;
  hs.sinkhorn_iters = 20;
  const int64_t cols = static_cast<int64_t>(hs.dim) * mult;
  const int64_t rows = head ? mult : 2 * mult + mult * mult;
  const std::string name = std::string(head ? "hc_head" : "hc_pre") + " partials mult=" + std::to_string(mult);
  HostMatrix h = make_host(GgmlType::F16, cols, rows, 1, rng);
  auto dm = upload_matrix(GgmlType::F16, cols, rows, 1, h.bytes.data());
  check(dm.ok(), name + ": upload");
  if (!dm.ok()) return;
  const std::vector<float> x = random_floats(cols, rng), scale = random_floats(3, rng, 0.5f, 1.5f),
                           base = random_floats(rows, rng), norm = random_floats(hs.dim, rng, 0.5f, 1.5f);
  DeviceVec<float> dx(x), dscale(scale), dbase(base), dnorm(norm), dmix(rows), dws(32 * 4096);
  DeviceVec<float> post_a(mult), comb_a(mult * mult), out_a(hs.dim), post_b(mult), comb_b(mult * mult), out_b(hs.dim);
  MatvecLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get();
  l.y = dmix.get();
  l.split_workspace = dws.get();
  l.split_workspace_floats = 32 * 4096;
  Status s = launch_matvec(l, nullptr);
  if (s.ok()) {
    s = head ? launch_hc_head(dx.get(), dmix.get(), dscale.get(), dbase.get(), dnorm.get(), hs, out_a.get(), nullptr)
             : launch_hc_pre(dx.get(), dmix.get(), dscale.get(), dbase.get(), dnorm.get(), hs, post_a.get(),
                             comb_a.get(), out_a.get(), nullptr);
  }
  check(s.ok(), name + ": unfused launches: " + s.message());
  l.tile_partials_only = true;
  Result<int> tiles = matvec_tile_columns(l);
  check(tiles.ok(), name + ": tile count: " + (tiles.ok() ? std::string() : tiles.status().message()));
  if (!tiles.ok()) return;
  std::printf("  %s: %d column tiles\n", name.c_str(), *tiles);
  s = launch_matvec(l, nullptr);
  if (s.ok()) {
    s = head ? launch_hc_head_partials(dx.get(), dws.get(), *tiles, dscale.get(), dbase.get(), dnorm.get(), hs,
                                       out_b.get(), nullptr)
             : launch_hc_pre_partials(dx.get(), dws.get(), *tiles, dscale.get(), dbase.get(), dnorm.get(), hs,
                                      post_b.get(), comb_b.get(), out_b.get(), nullptr);
  }
  check(s.ok(), name + ": fused launches: " + s.message());
  check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernels failed");
  const auto same = [&](const DeviceVec<float>& a, const DeviceVec<float>& b, const char* what) {
    const std::vector<float> ha = a.host(), hb = b.host();
    int diff = 0;
    for (size_t i = 0; i < ha.size(); ++i) {
      if (std::memcmp(&ha[i], &hb[i], sizeof(float)) != 0 && diff++ < 3) {
        std::printf("  %s: %s[%zu] unfused %.9g fused %.9g\n", name.c_str(), what, i, ha[i], hb[i]);
      }
    }
    check(diff == 0, name + ": " + std::to_string(diff) + " " + what + " values differ from the unfused path");
  };
  same(out_a, out_b, "out");
  if (!head) {
    same(post_a, post_b, "post");
    same(comb_a, comb_b, "comb");
  }
  // A launch that cannot use column tiles is refused when partials are asked for.
  MatvecLaunch refused = l;
  refused.tile_kernel = -1;
  const Status r = launch_matvec(refused, nullptr);
  check(!r.ok() && r.message().find("tile_partials_only") != std::string::npos,
        name + ": partials without column tiles refused (got: " + r.message() + ")");
}

// GB/s of one decode-shaped launch (weights read once per token).
void bench(GgmlType type, int64_t cols, int64_t rows, double bandwidth, bool int8 = false, int lanes_per_row = 0,
           bool lane_tables = false) {
  auto dm = random_matrix(type, cols, rows, 1, 99);
  if (!dm.ok()) {
    std::printf("bench %s: %s\n", std::string(ggml_type_name(type)).c_str(), dm.status().message().c_str());
    return;
  }
  DeviceVec<float> dx(cols), dy(rows), dsplit(32 * 8192);
  MatvecLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get();
  l.y = dy.get();
  l.split_workspace = dsplit.get();
  l.split_workspace_floats = 32 * 8192;
  l.int8_activations = int8;
  l.lanes_per_row = lanes_per_row;
  l.iq2xxs_lane_tables = lane_tables;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) (void)launch_matvec(l, nullptr);
  const int reps = 20;
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i) (void)launch_matvec(l, nullptr);
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  const double bytes = static_cast<double>((*dm)->m.data_bytes() + (*dm)->m.scale_bytes());
  const double gbs = bytes * reps / (ms * 1e-3) / 1e9;
  const std::string lanes = (lanes_per_row ? "  lanes/row=" + std::to_string(lanes_per_row) : "") +
                            (lane_tables ? "  lane tables" : "");
  std::printf("bench matvec %-8s %6lld x %-6lld %8.1f MB  %7.1f us  %7.1f GB/s  (%.0f%% of read bandwidth)%s%s\n",
              std::string(ggml_type_name(type)).c_str(), static_cast<long long>(rows),
              static_cast<long long>(cols), bytes / 1e6, ms * 1e3 / reps, gbs, 100.0 * gbs * 1e9 / bandwidth,
              int8 ? "  int8 x" : "", lanes.c_str());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

// One-token launch timings of `slots` x rows x cols with MatvecLaunch::tile_kernel
// `mode` (1 column tiles, -1 row kernels, 0 the launch's choice): back-to-back stream
// launches, and the same launches captured in one CUDA graph (as decode runs them).
// Successive launches read different copies of the matrix (about 200 MB in all, more
// than the L2 cache), so small matrices come from device memory as in decode.
void bench_tile(GgmlType type, int64_t cols, int64_t rows, int slots, double bandwidth, int mode, const char* what,
                int chunks_per_lane = 0) {
  const double one_bytes = static_cast<double>(ggml_row_bytes(type, cols)) * rows * slots;
  const int copies = static_cast<int>(std::clamp(200e6 / one_bytes, 1.0, 256.0));
  auto dm = random_matrix(type, cols, rows * slots, copies, 99);
  if (!dm.ok()) {
    std::printf("bench tile %s: %s\n", what, dm.status().message().c_str());
    return;
  }
  DeviceVec<float> dx(static_cast<size_t>(cols) * slots), dy(static_cast<size_t>(rows) * slots), dws(64 * 8192);
  MatvecLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get();
  l.x_slot_stride = cols;
  l.y = dy.get();
  l.y_slot_stride = rows;
  l.n_slots = slots;
  l.n_rows = rows;
  l.slot_row_stride = rows;
  l.split_workspace = dws.get();
  l.split_workspace_floats = 64 * 8192;
  l.tile_kernel = mode;
  l.tile_chunks_per_lane = chunks_per_lane;
  const int reps = std::max(50, 2 * copies);
  const auto launch = [&](int i, cudaStream_t st) {
    l.fixed_matrix = i % copies;
    return launch_matvec(l, st).ok();
  };
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  bool ok = true;
  for (int i = 0; i < 3; ++i) ok = ok && launch(i, stream);
  cudaEventRecord(a, stream);
  for (int i = 0; i < reps; ++i) ok = ok && launch(i, stream);
  cudaEventRecord(b, stream);
  cudaEventSynchronize(b);
  float ms_stream = 0;
  cudaEventElapsedTime(&ms_stream, a, b);
  float ms_graph = -1;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    for (int i = 0; i < reps; ++i) ok = ok && launch(i, stream);
    if (cudaStreamEndCapture(stream, &graph) == cudaSuccess &&
        cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
      cudaGraphLaunch(exec, stream);
      cudaStreamSynchronize(stream);
      cudaEventRecord(a, stream);
      cudaGraphLaunch(exec, stream);
      cudaEventRecord(b, stream);
      cudaEventSynchronize(b);
      cudaEventElapsedTime(&ms_graph, a, b);
    }
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  if (!ok || cudaDeviceSynchronize() != cudaSuccess) std::printf("bench tile %s: a launch failed\n", what);
  const double bytes = static_cast<double>((*dm)->m.data_bytes() + (*dm)->m.scale_bytes()) / copies;
  const auto line = [&](const char* how, float ms) {
    const double us = ms * 1e3 / reps;
    const double gbs = bytes / (us * 1e-6) / 1e9;
    std::printf("bench tile %-26s %-5s %d x %6lld x %-6lld %7.2f MB  %7.2f us  %7.1f GB/s  (%.0f%% of read "
                "bandwidth)  %s%s  %s\n",
                what, std::string(ggml_type_name(type)).c_str(), slots, static_cast<long long>(rows),
                static_cast<long long>(cols), bytes / 1e6, us, gbs, 100.0 * gbs * 1e9 / bandwidth,
                mode > 0 ? "column tiles" : mode < 0 ? "row kernels" : "default",
                chunks_per_lane ? (" chunks/lane=" + std::to_string(chunks_per_lane)).c_str() : "", how);
  };
  line("stream", ms_stream);
  if (ms_graph >= 0) line("graph", ms_graph);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaStreamDestroy(stream);
}

// The real routed-expert launches of one decode token (MODEL.md: dim 4096, expert
// ffn 2048, 6 of 256 experts): gate+up paired with slot_matrix and the SwiGLU, then
// the down projection summed over the 6 slots. The pool holds `pool` experts and
// every repetition picks 6 others, so the weights come from device memory, not L2.
// GB/s counts the bytes of the 6 experts actually read.
void bench_experts(GgmlType gate_type, GgmlType down_type, double bandwidth, bool int8, int lanes_per_row = 0,
                   bool lane_tables = false, bool prefetch = false) {
  const int64_t dim = 4096, ffn = 2048;
  const int used = 6, pool = 96, reps = 16;
  auto dg = random_matrix(gate_type, dim, ffn, pool, 7);
  auto du = random_matrix(gate_type, dim, ffn, pool, 8);
  auto dd = random_matrix(down_type, ffn, dim, pool, 9);
  if (!dg.ok() || !du.ok() || !dd.ok()) {
    std::printf("bench experts: could not allocate the expert pool\n");
    return;
  }
  std::vector<int32_t> ids(static_cast<size_t>(used) * reps);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i % pool);
  std::vector<float> weights(used, 0.5f);
  std::mt19937 rng(5);
  DeviceVec<float> dx(random_floats(dim, rng)), dh(used * ffn), dy(dim), dw(weights);
  DeviceVec<int32_t> dids(ids);
  MatvecLaunch gu;
  gu.w = &(*dg)->m;
  gu.w_up = &(*du)->m;
  gu.x = dx.get();
  gu.y = dh.get();
  gu.y_slot_stride = ffn;
  gu.n_slots = used;
  gu.slot_weight = dw.get();
  gu.int8_activations = int8;
  gu.lanes_per_row = lanes_per_row;
  gu.iq2xxs_lane_tables = lane_tables;
  MatvecLaunch dn;
  dn.w = &(*dd)->m;
  dn.x = dh.get();
  dn.x_slot_stride = ffn;
  dn.y = dy.get();
  dn.n_slots = used;
  dn.sum_slots = true;
  dn.int8_activations = int8;
  dn.lanes_per_row = lanes_per_row;
  dn.prefetch_next = prefetch;
  const auto matrix_bytes = [](const DeviceMatrix& m) {
    return static_cast<double>(m.data_bytes() + m.scale_bytes()) / static_cast<double>(m.count);
  };
  const double gu_bytes = used * (matrix_bytes((*dg)->m) + matrix_bytes((*du)->m));
  const double dn_bytes = used * matrix_bytes((*dd)->m);
  cudaEvent_t e0, e1, e2;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventCreate(&e2);
  float gu_ms = 0, dn_ms = 0;
  bool ok = true;
  for (int pass = 0; pass < 2; ++pass) {  // pass 0 warms up
    gu_ms = dn_ms = 0;
    for (int i = 0; i < reps; ++i) {
      gu.slot_matrix = dn.slot_matrix = dids.get() + i * used;
      cudaEventRecord(e0);
      ok = ok && launch_matvec(gu, nullptr).ok();
      cudaEventRecord(e1);
      ok = ok && launch_matvec(dn, nullptr).ok();
      cudaEventRecord(e2);
      cudaEventSynchronize(e2);
      float a = 0, b = 0;
      cudaEventElapsedTime(&a, e0, e1);
      cudaEventElapsedTime(&b, e1, e2);
      gu_ms += a;
      dn_ms += b;
    }
  }
  if (!ok) std::printf("bench experts: a launch failed\n");
  const auto line = [&](const char* what, GgmlType type, double bytes, float ms) {
    const double us = ms * 1e3 / reps;
    const double gbs = bytes / (us * 1e-6) / 1e9;
    const std::string lanes = (lanes_per_row ? "  lanes/row=" + std::to_string(lanes_per_row) : "") +
                              (lane_tables && gate_type == type ? "  lane tables" : "") +
                              (prefetch && down_type == type ? "  prefetch" : "");
    std::printf("bench experts %-22s %-8s %8.1f MB  %7.1f us  %7.1f GB/s  (%.0f%% of read bandwidth)%s%s\n", what,
                std::string(ggml_type_name(type)).c_str(), bytes / 1e6, us, gbs, 100.0 * gbs * 1e9 / bandwidth,
                int8 && matvec_int8_capable(type) ? "  int8 x" : "", lanes.c_str());
  };
  line("6x gate+up 2048x4096", gate_type, gu_bytes, gu_ms);
  line("6x down 4096x2048 sum", down_type, dn_bytes, dn_ms);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaEventDestroy(e2);
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  std::mt19937 rng(20261129);
  const GgmlType types[] = {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0,
                            GgmlType::IQ2_XXS, GgmlType::Q2_K, GgmlType::Q4_K};
  for (GgmlType t : types) {
    for (int tokens : {1, 3, 8, 17}) test_plain(t, 512, 200, tokens, rng);
    test_plain(t, 4096, 24, 1, rng);     // few rows: several warps per row
    test_plain(t, 16384, 24, 1, rng);    // few long rows: split over blocks
    test_plain(t, 4096, 256, 1, rng);    // split with one warp per row
    test_plain(t, 256, 70, 1, rng);      // short rows: several rows per warp
    test_plain(t, 2048, 1031, 1, rng);   // many rows, odd count
  }
  test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 512, 256, 8, rng);
  test_experts(GgmlType::Q4_K, GgmlType::Q4_K, 512, 256, 5, rng);
  test_experts(GgmlType::Q8_0, GgmlType::Q8_0, 256, 128, 4, rng);
  // The opt-in int8-activation path, same shapes.
  for (GgmlType t : {GgmlType::IQ2_XXS, GgmlType::Q2_K, GgmlType::Q4_K}) {
    for (int tokens : {1, 3, 8, 17}) test_plain(t, 512, 200, tokens, rng, true);
    test_plain(t, 4096, 24, 1, rng, true);
    test_plain(t, 16384, 24, 1, rng, true);
    test_plain(t, 4096, 256, 1, rng, true);
    test_plain(t, 256, 70, 1, rng, true);
    test_plain(t, 2048, 1031, 1, rng, true);
  }
  test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 512, 256, 8, rng, true);
  test_experts(GgmlType::Q4_K, GgmlType::Q4_K, 512, 256, 5, rng, true);
  // x not 16-byte aligned, with a token stride that is not a multiple of 4.
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::F16, GgmlType::IQ2_XXS}) test_plain(t, 512, 200, 3, rng, false, 1);
  test_plain(GgmlType::Q2_K, 512, 200, 1, rng, true, 3);
  // Decode shapes: many rows, so every warp walks several row steps.
  test_plain(GgmlType::Q8_0, 1024, 32768, 1, rng);      // attn_q_b
  test_plain(GgmlType::F16, 4096, 1024, 1, rng);        // compressor
  test_plain(GgmlType::IQ2_XXS, 4096, 16384, 1, rng);
  test_plain(GgmlType::Q2_K, 2048, 16384, 1, rng);
  test_plain(GgmlType::Q2_K, 2048, 16384, 1, rng, true);
  test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 4096, 2048, 8, rng);        // the real expert shapes
  test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 4096, 2048, 8, rng, true);
  // Lanes per row chosen by the caller (the tuning option): every type, whole and
  // partial rows per lane group, and the expert launches.
  for (GgmlType t : types) {
    for (int lanes : {4, 8, 16}) test_plain(t, 2048, 1031, 1, rng, false, 0, lanes);
  }
  test_plain(GgmlType::IQ2_XXS, 4096, 300, 3, rng, false, 0, 8);
  test_plain(GgmlType::Q2_K, 2048, 300, 1, rng, true, 0, 8);
  // IQ2_XXS selectors from per-bank table copies (the tuning option), f32 and int8 x.
  for (bool int8 : {false, true}) {
    for (int tokens : {1, 3, 8}) test_plain(GgmlType::IQ2_XXS, 512, 200, tokens, rng, int8, 0, 0, true);
    test_plain(GgmlType::IQ2_XXS, 4096, 24, 1, rng, int8, 0, 0, true);
    test_plain(GgmlType::IQ2_XXS, 4096, 2051, 1, rng, int8, 0, 0, true);
    test_plain(GgmlType::IQ2_XXS, 4096, 2051, 1, rng, int8, 0, 8, true);
    test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 4096, 2048, 8, rng, int8, 0, true);
    test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 4096, 2048, 8, rng, int8, 8, true);
  }
  for (int lanes : {8, 16}) {
    test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 4096, 2048, 8, rng, false, lanes);
    test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 4096, 2048, 8, rng, true, lanes);
  }
  {
    MatvecLaunch bad;
    auto dm = random_matrix(GgmlType::Q8_0, 256, 8, 1, 3);
    check(dm.ok(), "lanes_per_row refusal: upload");
    if (!dm.ok()) return finish("matvec_test");
    DeviceVec<float> dx(256), dy(8);
    bad.w = &(*dm)->m;
    bad.x = dx.get();
    bad.y = dy.get();
    bad.lanes_per_row = 12;
    const Status s = launch_matvec(bad, nullptr);
    check(!s.ok() && s.message().find("lanes_per_row 12") != std::string::npos,
          "lanes_per_row 12 is refused with a message naming it (got: " + s.message() + ")");
  }
  // Q2_K loads one iteration ahead (the tuning option), plain and summed over experts.
  for (bool int8 : {false, true}) {
    for (int lanes : {0, 8}) {
      test_plain(GgmlType::Q2_K, 2048, 1031, 1, rng, int8, 0, lanes, false, true);
      test_plain(GgmlType::Q2_K, 4096, 24, 1, rng, int8, 0, lanes, false, true);
      test_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, 4096, 2048, 8, rng, int8, lanes, false, true);
    }
    test_plain(GgmlType::Q2_K, 512, 200, 3, rng, int8, 0, 0, false, true);
  }
  // Column tiles (MatvecLaunch::tile_kernel): forced, chosen, without workspace (whole
  // rows per tile), with row slots, accumulate and the x norm; the decode shapes.
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0}) {
    for (int mode : {1, 0}) {
      test_tile(t, 16384, 24, 1, mode, 32 * 4096, false, rng);
      test_tile(t, 16384, 4, 1, mode, 32 * 4096, true, rng);
      test_tile(t, 4096, 256, 1, mode, 32 * 4096, false, rng);
      test_tile(t, 4096, 24, 1, mode, 0, false, rng);
      test_tile(t, 1024, 300, 3, mode, 32 * 4096, true, rng);
      test_tile(t, 96, 70, 1, mode, 32 * 4096, false, rng);
      test_tile(t, 32, 33, 2, mode, 32 * 4096, false, rng);
      test_tile(t, 1024, 300, 1, mode, 32 * 4096, false, rng, true);
    }
  }
  test_tile(GgmlType::F16, 16384, 24, 1, -1, 32 * 4096, false, rng);
  test_tile(GgmlType::Q8_0, 4096, 1024, 1, 1, 32 * 4096, false, rng);      // attn_q_a
  test_tile(GgmlType::Q8_0, 1024, 32768, 1, 1, 32 * 4096, false, rng);     // attn_q_b
  test_tile(GgmlType::Q8_0, 1024, 32768, 1, 1, 32 * 4096, false, rng, true);
  test_tile(GgmlType::Q8_0, 8192, 4096, 1, 1, 32 * 4096, true, rng);       // out_b
  test_tile(GgmlType::Q8_0, 4096, 1024, 8, 1, 32 * 4096, false, rng);      // out_a: 8 groups
  test_tile(GgmlType::F16, 16384, 24, 1, 1, 100, false, rng);              // workspace too small
  for (int k : {1, 2, 4, 8}) {
    test_tile(GgmlType::Q8_0, 2048, 1000, 1, 1, 32 * 4096, false, rng, false, k);
    test_tile(GgmlType::Q8_0, 1024, 700, 2, 1, 0, true, rng, false, k);
    if (k <= 4) test_tile(GgmlType::F16, 2048, 1000, 1, 1, 32 * 4096, false, rng, false, k);
    if (k <= 2) test_tile(GgmlType::F32, 2048, 1000, 1, 1, 32 * 4096, false, rng, false, k);
  }
  {
    auto dm = random_matrix(GgmlType::F16, 256, 8, 1, 3);
    check(dm.ok(), "tile_chunks_per_lane refusal: upload");
    if (dm.ok()) {
      DeviceVec<float> dx(256), dy(8);
      MatvecLaunch bad;
      bad.w = &(*dm)->m;
      bad.x = dx.get();
      bad.y = dy.get();
      bad.tile_chunks_per_lane = 8;  // F16 allows at most 4
      const Status s = launch_matvec(bad, nullptr);
      check(!s.ok() && s.message().find("tile_chunks_per_lane 8") != std::string::npos,
            "tile_chunks_per_lane 8 for F16 is refused with a message naming it (got: " + s.message() + ")");
    }
  }
  test_tile_disabled(rng);
  test_hc_fused(4, false, rng);
  test_hc_fused(4, true, rng);
  test_grouped(rng);
  test_x_norm(GgmlType::Q8_0, rng);
  test_x_norm(GgmlType::F16, rng);
  const int rc = finish("matvec_test");

  auto bw = measure_read_bandwidth(size_t{4} << 30, 5);
  if (bw.ok()) {
    std::printf("bench read bandwidth (sum over 4 GiB): %.1f GB/s\n", *bw / 1e9);
    // One-token launches of decode (column tiles, row kernels, the default).
    for (int mode : {0, 1, -1}) {
      bench_tile(GgmlType::F16, 16384, 24, 1, *bw, mode, "hc mixing 24x16384");
      bench_tile(GgmlType::F16, 16384, 4, 1, *bw, mode, "head mixing 4x16384");
      bench_tile(GgmlType::F16, 4096, 256, 1, *bw, mode, "router 256x4096");
      bench_tile(GgmlType::Q8_0, 4096, 1024, 1, *bw, mode, "q_a 1024x4096");
      bench_tile(GgmlType::Q8_0, 1024, 32768, 1, *bw, mode, "q_b 32768x1024");
      bench_tile(GgmlType::Q8_0, 8192, 4096, 1, *bw, mode, "out_b 4096x8192");
      bench_tile(GgmlType::Q8_0, 4096, 1024, 8, *bw, mode, "out_a 8x1024x4096");
      bench_tile(GgmlType::F16, 4096, 1024, 1, *bw, mode, "compressor 1024x4096");
    }
    for (int k : {2, 4}) {  // the 35 MB launches with fewer chunks per lane in flight
      bench_tile(GgmlType::Q8_0, 1024, 32768, 1, *bw, 1, "q_b 32768x1024", k);
      bench_tile(GgmlType::Q8_0, 8192, 4096, 1, *bw, 1, "out_b 4096x8192", k);
      bench_tile(GgmlType::Q8_0, 4096, 1024, 8, *bw, 1, "out_a 8x1024x4096", k);
    }
    bench(GgmlType::Q8_0, 1024, 32768, *bw);     // attn_q_b
    bench(GgmlType::Q8_0, 4096, 129280, *bw);    // output head
    bench(GgmlType::F16, 4096, 1024, *bw);       // compressor
    bench(GgmlType::F16, 16384, 24, *bw);        // HC control 
    bench(GgmlType::IQ2_XXS, 4096, 2048 * 64, *bw);  // 64 experts' gate rows
    bench(GgmlType::Q2_K, 2048, 4096 * 64, *bw);     // 64 experts' down rows
    bench(GgmlType::Q4_K, 4096, 2048 * 64, *bw);
    bench(GgmlType::IQ2_XXS, 4096, 2048 * 64, *bw, true);
    bench(GgmlType::Q2_K, 2048, 4096 * 64, *bw, true);
    bench(GgmlType::Q4_K, 4096, 2048 * 64, *bw, true);
    bench_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, *bw, false);
    bench_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, *bw, true);
    // Tuning: lanes per row chosen by the caller (default above: the launch chooses).
    for (int lanes : {4, 8, 16}) {
      bench_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, *bw, false, lanes);
      bench_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, *bw, true, lanes);
    }
    for (int lanes : {0, 8, 16}) {
      bench_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, *bw, false, lanes, true, true);
      bench_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, *bw, true, lanes, true, true);
    }
    for (int lanes : {0, 8}) {
      bench_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, *bw, false, lanes, true);
      bench_experts(GgmlType::IQ2_XXS, GgmlType::Q2_K, *bw, true, lanes, true);
      bench(GgmlType::IQ2_XXS, 4096, 2048 * 64, *bw, false, lanes, true);
      bench(GgmlType::IQ2_XXS, 4096, 2048 * 64, *bw, true, lanes, true);
    }
    for (int lanes : {8, 16}) {
      bench(GgmlType::IQ2_XXS, 4096, 2048 * 64, *bw, false, lanes);
      bench(GgmlType::Q2_K, 2048, 4096 * 64, *bw, false, lanes);
      bench(GgmlType::Q4_K, 4096, 2048 * 64, *bw, false, lanes);
      bench(GgmlType::Q8_0, 1024, 32768, *bw, false, lanes);
    }
  }
  return rc;
}
