// The one-token dense kernels (cuda/dense_matvec.h) on the decode's real Q8_0 shapes with
// fresh random valid weights and x: q_b (32768 x 1024, the q norm folded into the x load),
// out_a (8 slots of 1024 x 4096, each its own 4096-slice of x), out_b (4096 x 8192), the
// shared expert's gate+up (2 x 2048 x 4096, SwiGLU, several limits, infinite included) and
// down (4096 x 2048, stored and accumulated), q_a (1024 x 4096), kv (512 x 4096), the F16
// router (256 x 4096); F16 weights, a partial row range and a stacked matrix
// (fixed_matrix) on smaller shapes. Every output element is checked against a CPU
// reference (format/ quant dequantization, double sums) within a bound derived from the
// f32 summation, outputs NaN-filled before each launch so an element never written fails;
// each failure prints its index, expected and got. Every built tuning variant of both
// kernels (registers and stream) is checked against the reference and bit for bit against
// the register kernel's default (both keep the same sums in the same order), and the same
// launch through launch_matvec (the generic kernel) agrees within twice the bound (max
// difference printed). Then the bad launches the API refuses, the stream kernel's
// fallback for scales it cannot copy in bulk, bit-identical repeats of both kernels
// (direct and graph replay), and timings: chains of 40 launches in a CUDA graph with
// programmatic dependent launch on, cycling through weight copies that together hold
// at least 3x the L2 (so weights come from DRAM), in us per launch and % of the read
// bandwidth measured in the same run, beside launch_matvec's time for the same chain;
// one summary line per shape (register kernel, stream kernel, fastest variant).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/bandwidth.h"
#include "cuda/dense_matvec.h"
#include "cuda/device_model.h"
#include "cuda/launch.h"
#include "cuda/matvec.h"
#include "cuda_test_util.h"
#include "format/quant.h"

using namespace ds4;
using namespace ds4::test;

namespace {

constexpr double kUnit = 1.0 / 16777216.0;  // 2^-24, f32 unit roundoff
// Roundings on one f32 sum path: up to 32 products of a lane's pieces, their scales, 5 lane
// levels, up to 8 warps, the stored add (launch_matvec: a few chunks per lane more); about
// 2.5 times that as margin.
constexpr double kSumRel = 128 * kUnit;

// A decode launch to check and time.
struct Shape {
  std::string name;
  GgmlType type = GgmlType::Q8_0;
  int64_t rows = 0;        // rows of one matrix of the stack (w.rows)
  int64_t cols = 0;
  int64_t count = 1;       // matrices stacked
  int fixed_matrix = 0;
  int n_slots = 1;
  int64_t n_rows = -1;     // -1: rows
  int64_t slot_row_stride = 0;
  int64_t x_slot_stride = 0;
  int64_t y_slot_stride = 0;
  bool paired = false;
  bool norm = false;
  bool accumulate = false;
  float limit = INFINITY;
  bool time = false;       // part of the benchmark
  int64_t out_rows() const { return n_rows < 0 ? rows : n_rows; }
  int64_t x_len() const { return (n_slots - 1) * x_slot_stride + cols; }
  int64_t y_len() const { return (n_slots - 1) * y_slot_stride + out_rows(); }
  // Weight bytes one launch reads (quants and scales of every row it uses).
  double bytes() const {
    const double per_row = static_cast<double>(ggml_row_bytes(type, cols));
    return per_row * out_rows() * n_slots * (paired ? 2 : 1);
  }
};

std::vector<Shape> shapes() {
  std::vector<Shape> s;
  Shape qb{"q_b 32768x1024 +norm", GgmlType::Q8_0, 32768, 1024};
  qb.norm = true;
  qb.time = true;
  s.push_back(qb);
  Shape oa{"out_a 8 slots 1024x4096", GgmlType::Q8_0, 8192, 4096};
  oa.n_slots = 8;
  oa.n_rows = 1024;
  oa.slot_row_stride = 1024;
  oa.x_slot_stride = 4096;
  oa.y_slot_stride = 1024;
  oa.time = true;
  s.push_back(oa);
  Shape ob{"out_b 4096x8192", GgmlType::Q8_0, 4096, 8192};
  ob.time = true;
  s.push_back(ob);
  for (float limit : {INFINITY, 10.0f, 0.05f}) {
    Shape gu{"shexp gate+up 2048x4096 limit " + std::to_string(limit), GgmlType::Q8_0, 2048, 4096};
    gu.paired = true;
    gu.limit = limit;
    gu.time = std::isinf(limit);
    if (std::isinf(limit)) gu.name = "shexp gate+up 2048x4096";
    s.push_back(gu);
  }
  Shape dn{"shexp down 4096x2048", GgmlType::Q8_0, 4096, 2048};
  dn.time = true;
  s.push_back(dn);
  Shape dna = dn;
  dna.name = "shexp down 4096x2048 accumulate";
  dna.accumulate = true;
  dna.time = false;
  s.push_back(dna);
  Shape qa{"q_a 1024x4096", GgmlType::Q8_0, 1024, 4096};
  qa.time = true;
  s.push_back(qa);
  Shape kv{"kv 512x4096", GgmlType::Q8_0, 512, 4096};
  kv.time = true;
  s.push_back(kv);
  Shape router{"router F16 256x4096", GgmlType::F16, 256, 4096};
  router.time = true;
  s.push_back(router);
  // Smaller cases: F16, a partial row range of a stacked matrix, norm with 4096 columns.
  Shape f16{"F16 512x4096", GgmlType::F16, 512, 4096};
  s.push_back(f16);
  Shape f16p{"F16 gate+up 256x2048 limit 0.5", GgmlType::F16, 256, 2048};
  f16p.paired = true;
  f16p.limit = 0.5f;
  s.push_back(f16p);
  Shape part{"Q8_0 stack matrix 1, rows 1000 of 1536x2048, accumulate", GgmlType::Q8_0, 1536, 2048};
  part.count = 2;
  part.fixed_matrix = 1;
  part.n_rows = 1000;
  part.accumulate = true;
  s.push_back(part);
  Shape slots3{"Q8_0 3 slots of 37 rows x 8192, strided", GgmlType::Q8_0, 128, 8192};
  slots3.n_slots = 3;
  slots3.n_rows = 37;
  slots3.slot_row_stride = 40;
  slots3.x_slot_stride = 8192 + 4;
  slots3.y_slot_stride = 50;
  s.push_back(slots3);
  Shape n4{"Q8_0 norm 700x4096", GgmlType::Q8_0, 700, 4096};
  n4.norm = true;
  s.push_back(n4);
  return s;
}

// Whether two stream stages fit in the stream kernel's default 96 KiB ring.
bool stream_fits_ring(bool paired, GgmlType type, int warps, int units) {
  const int per_unit = type == GgmlType::Q8_0 ? 1024 + 64 : 2048;
  return 2 * warps * units * per_unit * (paired ? 2 : 1) + 128 <= 96 * 1024;
}

// The stream kernel's variants: 8 or 16 consumer warps, 1, 2 or 4 units per warp (those
// whose two stages fit the default ring), two teams of 8 warps (default and 160 KiB
// rings), the producer warp's lanes copying with cp.async, a ring of two stages (the
// most reuse of every stage), the GB10's 99 KiB, a deep ring (160 KiB: eight stages of
// 17 KiB on the H200), and two blocks per multiprocessor where they fit.
std::vector<DenseMatvecOptions> stream_options(bool paired, GgmlType type) {
  std::vector<DenseMatvecOptions> out;
  DenseMatvecOptions def;
  def.kernel = DenseKernel::kStream;
  out.push_back(def);
  for (int warps : {8, 16}) {
    for (int units : {1, 2, 4}) {
      if (!stream_fits_ring(paired, type, warps, units)) continue;
      DenseMatvecOptions o = def;
      o.stream_warps = warps;
      o.stream_units = units;
      out.push_back(o);
    }
  }
  for (int units : {1, 2, 4}) {  // two teams of 8 warps, each on its own stages
    if (!stream_fits_ring(paired, type, 8, units)) continue;
    for (int ring : {0, 160}) {
      DenseMatvecOptions o = def;
      o.stream_warps = 8;
      o.stream_units = units;
      o.stream_teams = 2;
      o.stream_ring_kib = ring;
      out.push_back(o);
    }
  }
  for (int units : {0, 4}) {  // the producer warp's lanes copying with cp.async
    if (units && !stream_fits_ring(paired, type, 8, units)) continue;
    for (int teams : {1, 2}) {
      DenseMatvecOptions o = def;
      o.stream_lane_copies = true;
      o.stream_units = units;
      o.stream_teams = teams;
      out.push_back(o);
    }
  }
  const int unit_bytes = type == GgmlType::Q8_0 ? 1024 + 64 : 2048;
  DenseMatvecOptions two = def;  // default shape: 8 warps, 2 units (1 paired)
  two.stream_ring_kib = (2 * 8 * (paired ? 1 : 2) * unit_bytes * (paired ? 2 : 1) + 128 + 1023) / 1024;
  out.push_back(two);
  DenseMatvecOptions gb10 = def;
  gb10.stream_ring_kib = 99;
  out.push_back(gb10);
  DenseMatvecOptions deep = def;  // eight stages on the H200 (the device's limit elsewhere)
  deep.stream_ring_kib = 160;
  out.push_back(deep);
  DenseMatvecOptions two_blocks = def;
  two_blocks.blocks_per_sm = 2;
  out.push_back(two_blocks);
  return out;
}

std::vector<DenseMatvecOptions> all_options(bool paired, GgmlType type) {
  std::vector<DenseMatvecOptions> out;
  DenseMatvecOptions registers;
  registers.kernel = DenseKernel::kRegisters;
  out.push_back(registers);
  for (int r : {2, 4, 8}) {
    for (bool prefetch : {true, false}) {
      for (int l2 : {-1, 0}) {
        if (paired && r == 8) continue;
        if (type == GgmlType::F16 && prefetch && (r == 8 || (paired && r == 4))) continue;
        DenseMatvecOptions o = registers;
        o.rows_per_batch = r;
        o.prefetch = prefetch;
        o.l2_prefetch_kib = l2;
        out.push_back(o);
      }
    }
  }
  DenseMatvecOptions one = registers;
  one.blocks_per_sm = 1;
  out.push_back(one);
  DenseMatvecOptions two_blocks = registers;  // the default before small launches took one
  two_blocks.blocks_per_sm = 2;
  out.push_back(two_blocks);
  for (int kib : {16, 64}) {
    DenseMatvecOptions some = registers;
    some.l2_prefetch_kib = kib;
    out.push_back(some);
  }
  for (const DenseMatvecOptions& o : stream_options(paired, type)) out.push_back(o);
  return out;
}

std::string options_name(const DenseMatvecOptions& o) {
  if (o.kernel == DenseKernel::kStream) {
    std::string s = "stream warps=" + (o.stream_warps ? std::to_string(o.stream_warps) : std::string("auto"));
    s += " units=" + (o.stream_units ? std::to_string(o.stream_units) : std::string("auto"));
    if (o.stream_teams) s += " teams=" + std::to_string(o.stream_teams);
    if (o.stream_lane_copies) s += " lane-copies";
    s += " ring=" + (o.stream_ring_kib ? std::to_string(o.stream_ring_kib) + "KiB" : std::string("auto"));
    if (o.blocks_per_sm) s += " blocks/SM=" + std::to_string(o.blocks_per_sm);
    return s;
  }
  std::string s = o.rows_per_batch ? "rows/batch=" + std::to_string(o.rows_per_batch) : std::string("rows/batch=auto");
  s += o.prefetch ? " prefetch" : " no-prefetch";
  s += o.l2_prefetch_kib < 0 ? " l2=share" : " l2=" + std::to_string(o.l2_prefetch_kib) + "KiB";
  if (o.blocks_per_sm) s += " blocks/SM=" + std::to_string(o.blocks_per_sm);
  return s;
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

// The x values the kernels compute with: x itself, or normalised as the GPU does it
// (scale from a double sum, rounded to float; then x * scale * weight in float).
std::vector<float> x_used(const std::vector<float>& x, const std::vector<float>& norm_w, int64_t cols, float eps) {
  if (norm_w.empty()) return x;
  double ss = 0;
  for (int64_t i = 0; i < cols; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(cols) + static_cast<double>(eps)));
  std::vector<float> out(cols);
  for (int64_t i = 0; i < cols; ++i) {
    const volatile float t = x[i] * scale;
    out[i] = t * norm_w[i];
  }
  return out;
}

struct Case {
  Shape shape;
  std::vector<uint8_t> w_host, u_host;
  std::unique_ptr<OwnedDeviceMatrix> w, u;
  std::vector<float> x, norm_w, y0;
  std::vector<double> expect, bound;  // per output element
  int64_t clamped = 0;                // paired outputs whose gate or up the limit clamps
};

// Exact dot products and bounds on |f32 result - exact| of every output of the case.
void reference(Case* c) {
  const Shape& s = c->shape;
  const size_t row_bytes = ggml_row_bytes(s.type, s.cols);
  const int64_t n = s.out_rows();
  c->expect.assign(s.y_len(), 0.0);
  c->bound.assign(s.y_len(), 0.0);
  std::vector<float> wr(s.cols), ur(s.cols);
  for (int slot = 0; slot < s.n_slots; ++slot) {
    std::vector<float> xs(c->x.begin() + slot * s.x_slot_stride, c->x.begin() + slot * s.x_slot_stride + s.cols);
    const std::vector<float> xv = x_used(xs, c->norm_w, s.cols, 1e-6f);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t stack_row = s.fixed_matrix * s.rows + slot * s.slot_row_stride + r;
      dequantize_row(s.type, c->w_host.data() + stack_row * row_bytes, wr.data(), s.cols);
      double g = 0, gm = 0, u = 0, um = 0;
      for (int64_t i = 0; i < s.cols; ++i) {
        g += static_cast<double>(wr[i]) * xv[i];
        gm += std::fabs(static_cast<double>(wr[i]) * xv[i]);
      }
      if (s.paired) {
        dequantize_row(s.type, c->u_host.data() + stack_row * row_bytes, ur.data(), s.cols);
        for (int64_t i = 0; i < s.cols; ++i) {
          u += static_cast<double>(ur[i]) * xv[i];
          um += std::fabs(static_cast<double>(ur[i]) * xv[i]);
        }
      }
      const int64_t out = slot * s.y_slot_stride + r;
      double v = g, b = kSumRel * gm;
      if (s.paired) {
        const double lim = s.limit;
        const double gc = std::min(g, lim), uc = std::min(std::max(u, -lim), lim);
        const double tg = kSumRel * gm, tu = kSumRel * um;
        v = silu(gc) * uc;
        c->clamped += g > lim || std::fabs(u) > lim;
        // silu' <= 1.1; the clamp does not widen the bounds; 16 units for silu and the product.
        b = 1.1 * tg * std::fabs(uc) + std::fabs(silu(gc)) * tu + 1.1 * tg * tu + 16 * kUnit * std::fabs(v);
      }
      if (s.accumulate) {
        v += c->y0[out];
        b += kUnit * std::fabs(v);
      }
      c->expect[out] = v;
      c->bound[out] = b + 1e-30;
    }
  }
}

bool make_case(const Shape& s, std::mt19937& rng, Case* c) {
  c->shape = s;
  c->w_host = random_blocks(s.type, s.rows * s.count, s.cols, rng);
  auto w = upload_matrix(s.type, s.cols, s.rows, s.count, c->w_host.data());
  check(w.ok(), s.name + ": upload of the weights" + (w.ok() ? "" : ": " + w.status().message()));
  if (!w.ok()) return false;
  c->w = std::move(*w);
  if (s.paired) {
    c->u_host = random_blocks(s.type, s.rows * s.count, s.cols, rng);
    auto u = upload_matrix(s.type, s.cols, s.rows, s.count, c->u_host.data());
    check(u.ok(), s.name + ": upload of the up weights");
    if (!u.ok()) return false;
    c->u = std::move(*u);
  }
  c->x = random_floats(s.x_len(), rng, -2.0f, 2.0f);
  if (s.norm) c->norm_w = random_floats(s.cols, rng, 0.5f, 1.5f);
  c->y0 = random_floats(s.y_len(), rng, -1.0f, 1.0f);
  reference(c);
  return true;
}

DenseMatvecLaunch dense_launch(const Case& c, const float* x, const float* nw, float* y) {
  const Shape& s = c.shape;
  DenseMatvecLaunch l;
  l.w = &c.w->m;
  l.w_up = s.paired ? &c.u->m : nullptr;
  l.x = x;
  l.x_slot_stride = s.x_slot_stride;
  l.y = y;
  l.y_slot_stride = s.y_slot_stride;
  l.n_slots = s.n_slots;
  l.n_rows = s.n_rows;
  l.slot_row_stride = s.slot_row_stride;
  l.fixed_matrix = s.fixed_matrix;
  l.swiglu_limit = s.limit;
  l.accumulate = s.accumulate;
  l.x_norm_weight = s.norm ? nw : nullptr;
  l.x_norm_eps = 1e-6f;
  return l;
}

MatvecLaunch matvec_launch(const DenseMatvecLaunch& d) {
  MatvecLaunch m;
  m.w = d.w;
  m.w_up = d.w_up;
  m.x = d.x;
  m.x_slot_stride = d.x_slot_stride;
  m.y = d.y;
  m.y_slot_stride = d.y_slot_stride;
  m.n_slots = d.n_slots;
  m.n_rows = d.n_rows;
  m.slot_row_stride = d.slot_row_stride;
  m.fixed_matrix = d.fixed_matrix;
  m.swiglu_limit = d.swiglu_limit;
  m.accumulate = d.accumulate;
  m.x_norm_weight = d.x_norm_weight;
  m.x_norm_eps = d.x_norm_eps;
  return m;
}

// Output positions a launch writes (other positions of y must keep their values).
std::vector<char> written(const Shape& s) {
  std::vector<char> w(s.y_len(), 0);
  for (int slot = 0; slot < s.n_slots; ++slot) {
    for (int64_t r = 0; r < s.out_rows(); ++r) w[slot * s.y_slot_stride + r] = 1;
  }
  return w;
}

// y before the launch: y0 where accumulating, NaN elsewhere; gaps between slots keep y0.
void fill_y(const Case& c, const DeviceVec<float>& y) {
  const std::vector<char> w = written(c.shape);
  std::vector<float> h(c.y0);
  for (size_t i = 0; i < h.size(); ++i) {
    if (w[i] && !c.shape.accumulate) h[i] = NAN;
  }
  cudaMemcpy(y.get(), h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
}

// Checks y against the reference; returns the largest |got - expected|.
double compare(const Case& c, const std::vector<float>& got, const std::string& what, double bound_factor,
               int* failures_printed) {
  const std::vector<char> w = written(c.shape);
  double max_diff = 0;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!w[i]) {
      const bool same = std::memcmp(&got[i], &c.y0[i], sizeof(float)) == 0;
      if (!same) ++bad;
      if (!same && (*failures_printed)++ < 8) {
        std::printf("  %s: y[%zu] outside the launch's rows changed: %.9g (was %.9g)\n", what.c_str(), i, got[i],
                    c.y0[i]);
      }
      continue;
    }
    const double d = std::fabs(static_cast<double>(got[i]) - c.expect[i]);
    const bool ok = std::isfinite(got[i]) && d <= bound_factor * c.bound[i];
    if (std::isfinite(d)) max_diff = std::max(max_diff, d);
    if (!ok) {
      ++bad;
      if ((*failures_printed)++ < 8) {
        std::printf("  %s: y[%zu] expected %.9g got %.9g (|d| %.3g, bound %.3g)\n", what.c_str(), i, c.expect[i],
                    got[i], d, bound_factor * c.bound[i]);
      }
    }
  }
  check(bad == 0, what + ": " + std::to_string(bad) + " of " + std::to_string(got.size()) + " outputs wrong");
  return max_diff;
}

// a and b bit for bit; else prints how many outputs differ and the first few.
void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  int differ = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) == 0) continue;
    if (differ++ < 4) std::printf("  %s: y[%zu] %.9g, expected the bits of %.9g\n", what.c_str(), i, a[i], b[i]);
  }
  check(a.size() == b.size() && differ == 0,
        what + ": bit for bit (" + std::to_string(differ) + " of " + std::to_string(b.size()) + " differ)");
}

void test_case(const Case& c) {
  const Shape& s = c.shape;
  DeviceVec<float> dx(c.x), dn(c.norm_w.empty() ? std::vector<float>(4, 1.0f) : c.norm_w), dy(s.y_len());
  const DenseMatvecLaunch l = dense_launch(c, dx.get(), dn.get(), dy.get());
  Status sup = dense_matvec_supported(l);
  check(sup.ok(), s.name + ": supported: " + sup.message());
  if (s.paired && s.limit < 1.0f) {
    check(c.clamped > 0, s.name + ": the clamp is exercised (" + std::to_string(c.clamped) + " outputs)");
  }
  if (!sup.ok()) return;
  // The register kernel's default: the bits every variant must give (same sums, same order).
  DenseMatvecOptions registers;
  registers.kernel = DenseKernel::kRegisters;
  fill_y(c, dy);
  check(launch_dense_matvec(l, nullptr, registers).ok() && cudaDeviceSynchronize() == cudaSuccess,
        s.name + ": register kernel launch");
  const std::vector<float> register_bits = dy.host();
  int printed = 0;
  double worst = 0;
  for (const DenseMatvecOptions& o : all_options(s.paired, s.type)) {
    fill_y(c, dy);
    Status st = launch_dense_matvec(l, nullptr, o);
    const cudaError_t err = cudaDeviceSynchronize();
    const std::string what = s.name + " [" + options_name(o) + "]";
    check(st.ok() && err == cudaSuccess, what + ": launch " + st.message() + " " + cudaGetErrorString(err));
    if (!st.ok() || err != cudaSuccess) continue;
    const std::vector<float> got = dy.host();
    worst = std::max(worst, compare(c, got, what, 1.0, &printed));
    expect_same_bits(got, register_bits, what + " vs the register kernel");
  }
  // The generic kernel with the same launch.
  fill_y(c, dy);
  Status ms = launch_matvec(matvec_launch(l), nullptr);
  check(ms.ok() && cudaDeviceSynchronize() == cudaSuccess, s.name + ": launch_matvec " + ms.message());
  const std::vector<float> ref = dy.host();
  fill_y(c, dy);
  check(launch_dense_matvec(l, nullptr).ok() && cudaDeviceSynchronize() == cudaSuccess, s.name + ": default launch");
  const std::vector<float> got = dy.host();
  double vs_matvec = 0;
  int over = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(c.bound[i]) || c.bound[i] == 0) continue;
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    vs_matvec = std::max(vs_matvec, d);
    if (!(d <= 2 * c.bound[i])) {
      if (over++ < 4) {
        std::printf("  %s: y[%zu] dense %.9g launch_matvec %.9g (|d| %.3g, 2 x bound %.3g)\n", s.name.c_str(), i,
                    got[i], ref[i], d, 2 * c.bound[i]);
      }
    }
  }
  check(over == 0, s.name + ": dense vs launch_matvec within twice the bound (" + std::to_string(over) + " over)");
  int printed_ref = 0;
  compare(c, ref, s.name + " launch_matvec vs reference", 1.0, &printed_ref);
  std::printf("check %-58s max |d| vs reference %.3g, vs launch_matvec %.3g\n", s.name.c_str(), worst, vs_matvec);
  // launch_dense_or_matvec: the dense kernel's bits when on, launch_matvec's when off.
  for (bool on : {true, false}) {
    set_dense_matvec_enabled(on);
    fill_y(c, dy);
    check(launch_dense_or_matvec(matvec_launch(l), nullptr).ok() && cudaDeviceSynchronize() == cudaSuccess,
          s.name + ": launch_dense_or_matvec");
    const std::vector<float> either = dy.host();
    const std::vector<float>& want = on ? got : ref;
    check(std::memcmp(either.data(), want.data(), want.size() * sizeof(float)) == 0,
          s.name + ": launch_dense_or_matvec " + (on ? "on: the dense kernel's" : "off: launch_matvec's") +
              " outputs bit for bit");
  }
  set_dense_matvec_enabled(true);
  // The process-wide kernel switch: launches with default options take the stream kernel.
  set_dense_matvec_kernel(DenseKernel::kStream);
  check(dense_matvec_kernel() == DenseKernel::kStream, "set_dense_matvec_kernel(kStream) holds");
  fill_y(c, dy);
  check(launch_dense_or_matvec(matvec_launch(l), nullptr).ok() && cudaDeviceSynchronize() == cudaSuccess,
        s.name + ": launch_dense_or_matvec, stream kernel");
  expect_same_bits(dy.host(), register_bits, s.name + ": launch_dense_or_matvec with the stream kernel");
  set_dense_matvec_kernel(DenseKernel::kDefault);
  if (s.paired) {  // slot weights are not the dense kernel's: it falls back to launch_matvec
    DeviceVec<float> ones(std::vector<float>(s.n_slots, 1.0f));
    MatvecLaunch weighted = matvec_launch(l);
    weighted.slot_weight = ones.get();
    fill_y(c, dy);
    check(launch_dense_or_matvec(weighted, nullptr).ok() && cudaDeviceSynchronize() == cudaSuccess,
          s.name + ": launch_dense_or_matvec with slot weights");
    const std::vector<float> fb = dy.host();
    check(std::memcmp(fb.data(), ref.data(), ref.size() * sizeof(float)) == 0,
          s.name + ": with slot weights launch_dense_or_matvec gives launch_matvec's bits");
  }
  // dense_matvec_from on the MatvecLaunch gives the same launch.
  Result<DenseMatvecLaunch> from = dense_matvec_from(matvec_launch(l));
  check(from.ok() && from->w == l.w && from->w_up == l.w_up && from->x == l.x && from->y == l.y &&
            from->n_slots == l.n_slots && from->n_rows == l.n_rows && from->slot_row_stride == l.slot_row_stride &&
            from->x_slot_stride == l.x_slot_stride && from->y_slot_stride == l.y_slot_stride &&
            from->fixed_matrix == l.fixed_matrix && from->accumulate == l.accumulate &&
            from->x_norm_weight == l.x_norm_weight && from->swiglu_limit == l.swiglu_limit,
        s.name + ": dense_matvec_from copies the launch");
}

// Same launch twice directly and once from a graph (PDL on): bit-identical outputs.
void test_repeat(const Case& c, DenseKernel kernel) {
  const Shape& s = c.shape;
  DeviceVec<float> dx(c.x), dn(c.norm_w.empty() ? std::vector<float>(4, 1.0f) : c.norm_w), dy(s.y_len());
  const DenseMatvecLaunch l = dense_launch(c, dx.get(), dn.get(), dy.get());
  DenseMatvecOptions o;
  o.kernel = kernel;
  const std::string name = s.name + (kernel == DenseKernel::kStream ? " (stream)" : " (registers)");
  std::vector<std::vector<float>> runs;
  for (int i = 0; i < 2; ++i) {
    fill_y(c, dy);
    check(launch_dense_matvec(l, nullptr, o).ok() && cudaDeviceSynchronize() == cudaSuccess, name + ": repeat");
    runs.push_back(dy.host());
  }
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  fill_y(c, dy);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess;
  ok = launch_dense_matvec(l, stream, o).ok() && ok;
  ok = cudaStreamEndCapture(stream, &graph) == cudaSuccess && ok;
  ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  ok = ok && cudaGraphLaunch(exec, stream) == cudaSuccess && cudaStreamSynchronize(stream) == cudaSuccess;
  check(ok, name + ": captured and replayed in a graph");
  runs.push_back(dy.host());
  for (size_t i = 1; i < runs.size(); ++i) {
    check(std::memcmp(runs[i].data(), runs[0].data(), runs[0].size() * sizeof(float)) == 0,
          name + ": run " + std::to_string(i) + (i == 2 ? " (graph)" : "") + " bit-identical to run 0");
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

void expect_refused(const DenseMatvecLaunch& l, const DenseMatvecOptions& o, const std::string& what) {
  Status st = launch_dense_matvec(l, nullptr, o);
  check(!st.ok() && !st.message().empty(), "refused: " + what);
  std::printf("refused %-40s -> %s\n", what.c_str(), st.ok() ? "(accepted!)" : st.message().c_str());
}

void test_refusals() {
  DeviceVec<float> x(8192 + 8), y(8192), nw(4096);
  DeviceVec<uint8_t> data(4096 * 34), scales(4096);
  DeviceMatrix q8;
  q8.type = GgmlType::Q8_0;
  q8.cols = 1024;
  q8.rows = 4;
  q8.data = data.get();
  q8.scales = reinterpret_cast<uint16_t*>(scales.get());
  DenseMatvecLaunch good;
  good.w = &q8;
  good.x = x.get();
  good.y = y.get();
  check(dense_matvec_supported(good).ok(), "a small valid launch is supported");
  check(launch_dense_matvec(good, nullptr).ok() && cudaDeviceSynchronize() == cudaSuccess, "small launch runs");
  const DenseMatvecOptions defaults;
  DenseMatvecLaunch l = good;
  DeviceMatrix q2 = q8;
  q2.type = GgmlType::Q2_K;
  l.w = &q2;
  expect_refused(l, defaults, "Q2_K weights");
  DeviceMatrix odd = q8;
  odd.cols = 3072;
  l = good;
  l.w = &odd;
  expect_refused(l, defaults, "3072 columns");
  DeviceMatrix noscale = q8;
  noscale.scales = nullptr;
  l.w = &noscale;
  expect_refused(l, defaults, "Q8_0 without scales");
  l = good;
  l.x = x.get() + 1;
  expect_refused(l, defaults, "x not 16-byte aligned");
  l = good;
  l.n_slots = 2;
  l.x_slot_stride = 1026;
  expect_refused(l, defaults, "x_slot_stride not a multiple of 4");
  l = good;
  l.n_rows = 5;
  expect_refused(l, defaults, "rows beyond the matrix");
  l = good;
  l.n_slots = 2;
  l.slot_row_stride = 4;
  l.n_rows = 4;
  expect_refused(l, defaults, "slot rows beyond the stack");
  l = good;
  l.fixed_matrix = 1;
  expect_refused(l, defaults, "fixed_matrix beyond the stack");
  l = good;
  l.n_slots = 2;
  l.n_rows = 2;
  l.slot_row_stride = 2;
  l.x_norm_weight = nw.get();
  expect_refused(l, defaults, "x norm with two slots");
  l = good;
  l.x_norm_weight = nw.get() + 1;
  expect_refused(l, defaults, "x norm weight not aligned");
  DeviceMatrix other = q8;
  other.rows = 2;
  l = good;
  l.w_up = &other;
  expect_refused(l, defaults, "gate and up shapes differ");
  l = good;
  l.y = nullptr;
  expect_refused(l, defaults, "y null");
  l = good;
  l.w = nullptr;
  expect_refused(l, defaults, "no weight matrix");
  DenseMatvecOptions r3;
  r3.rows_per_batch = 3;
  expect_refused(good, r3, "rows_per_batch 3");
  DenseMatvecOptions r8;
  r8.rows_per_batch = 8;
  l = good;
  l.w_up = &q8;
  expect_refused(l, r8, "paired with rows_per_batch 8");
  DenseMatvecOptions stream;
  stream.kernel = DenseKernel::kStream;
  DenseMatvecOptions bad = stream;
  bad.stream_warps = 12;
  expect_refused(good, bad, "stream_warps 12");
  bad = stream;
  bad.stream_units = 3;
  expect_refused(good, bad, "stream_units 3");
  bad = stream;
  bad.stream_warps = 16;
  bad.stream_teams = 2;
  expect_refused(good, bad, "two teams of 16 warps");
  bad = stream;
  bad.stream_ring_kib = 20;  // one 17 KiB stage
  expect_refused(good, bad, "stream ring of one stage");
  bad = stream;
  bad.stream_ring_kib = -1;
  expect_refused(good, bad, "negative stream_ring_kib");
  bad = stream;
  bad.stream_warps = 16;
  bad.stream_units = 4;
  l = good;
  l.w_up = &q8;
  expect_refused(l, bad, "paired stream stage of 136 KiB");
  MatvecLaunch m;
  m.w = &q8;
  m.x = x.get();
  m.y = y.get();
  check(dense_matvec_from(m).ok(), "dense_matvec_from of a plain launch");
  m.n_tokens = 2;
  check(!dense_matvec_from(m).ok(), "dense_matvec_from refuses two tokens");
  m.n_tokens = 1;
  int32_t* ids = reinterpret_cast<int32_t*>(scales.get());
  m.slot_matrix = ids;
  check(!dense_matvec_from(m).ok(), "dense_matvec_from refuses slot_matrix");
  m.slot_matrix = nullptr;
  m.sum_slots = true;
  check(!dense_matvec_from(m).ok(), "dense_matvec_from refuses sum_slots");
  m.sum_slots = false;
  m.slot_weight = nw.get();
  check(!dense_matvec_from(m).ok(), "dense_matvec_from refuses slot weights");
  m.slot_weight = nullptr;
  m.enable = ids;
  check(!dense_matvec_from(m).ok(), "dense_matvec_from refuses an enable flag");
  check(cudaDeviceSynchronize() == cudaSuccess, "no error left after the refusals");
}

// Q8_0 scales at a 2-byte (not 16-byte) boundary: the stream kernel cannot copy them in
// bulk, so a stream launch runs the register kernel: the same bits, every output written.
void test_stream_fallback(std::mt19937& rng) {
  const int64_t rows = 64, cols = 2048;
  const std::vector<uint8_t> host = random_blocks(GgmlType::Q8_0, rows, cols, rng);
  auto w = upload_matrix(GgmlType::Q8_0, cols, rows, 1, host.data());
  check(w.ok(), "fallback: upload");
  if (!w.ok()) return;
  const int64_t n_scales = rows * cols / 32;
  DeviceVec<uint16_t> shifted_scales(n_scales + 8);
  cudaMemcpy(shifted_scales.get() + 1, (*w)->m.scales, n_scales * 2, cudaMemcpyDeviceToDevice);
  DeviceMatrix shifted = (*w)->m;
  shifted.scales = shifted_scales.get() + 1;
  DeviceVec<float> x(random_floats(cols, rng, -2.0f, 2.0f)), y(rows);
  DenseMatvecLaunch l;
  l.w = &(*w)->m;
  l.x = x.get();
  l.y = y.get();
  DenseMatvecOptions registers;
  registers.kernel = DenseKernel::kRegisters;
  check(launch_dense_matvec(l, nullptr, registers).ok() && cudaDeviceSynchronize() == cudaSuccess,
        "fallback: register launch");
  const std::vector<float> want = y.host();
  cudaMemcpy(y.get(), std::vector<float>(rows, NAN).data(), rows * sizeof(float), cudaMemcpyHostToDevice);
  l.w = &shifted;
  DenseMatvecOptions stream;
  stream.kernel = DenseKernel::kStream;
  check(launch_dense_matvec(l, nullptr, stream).ok() && cudaDeviceSynchronize() == cudaSuccess,
        "fallback: stream launch with scales at a 2-byte boundary");
  expect_same_bits(y.host(), want, "fallback: scales at a 2-byte boundary");
}

// Microseconds per launch of a chain: `launch(k, stream)` for k = 0..39 captured in one
// graph (PDL as currently set), replayed 10 times after one warm-up. Negative on failure.
double time_chain(const std::function<Status(int, cudaStream_t)>& launch) {
  constexpr int kChain = 40, kReplays = 10;
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess;
  for (int k = 0; k < kChain && ok; ++k) {
    Status st = launch(k, stream);
    if (!st.ok()) {
      std::printf("  chain launch %d: %s\n", k, st.message().c_str());
      ok = false;
    }
  }
  ok = cudaStreamEndCapture(stream, &graph) == cudaSuccess && ok;
  ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  float ms = -1;
  if (ok) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaGraphLaunch(exec, stream);
    cudaEventRecord(a, stream);
    for (int i = 0; i < kReplays; ++i) cudaGraphLaunch(exec, stream);
    cudaEventRecord(b, stream);
    ok = cudaEventSynchronize(b) == cudaSuccess;
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  (void)cudaGetLastError();
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  return ok ? ms * 1e3 / (kChain * kReplays) : -1.0;
}

void bench_shape(const Shape& s, double bandwidth) {
  // Copies stacked as matrices of one allocation; launch k uses copy k % copies, so the
  // chain's weights (>= 3x a 50 MB L2) are read from DRAM.
  const double per_copy = static_cast<double>(ggml_row_bytes(s.type, s.cols)) * s.rows * (s.paired ? 2 : 1);
  const int copies = static_cast<int>(std::ceil(150e6 / per_copy)) + 1;
  auto w = random_matrix(s.type, s.cols, s.rows, copies, 101);
  std::unique_ptr<OwnedDeviceMatrix> u;
  if (s.paired) {
    auto r = random_matrix(s.type, s.cols, s.rows, copies, 102);
    if (r.ok()) u = std::move(*r);
  }
  if (!w.ok() || (s.paired && !u)) {
    std::printf("bench dense %s: could not allocate %d copies\n", s.name.c_str(), copies);
    return;
  }
  std::mt19937 rng(7);
  DeviceVec<float> dx(random_floats(s.x_len(), rng)), dn(random_floats(s.cols, rng, 0.5f, 1.5f)), dy(s.y_len());
  DeviceVec<float> split(32 * 8192);
  DenseMatvecLaunch base;
  base.w = &(*w)->m;
  base.w_up = s.paired ? &u->m : nullptr;
  base.x = dx.get();
  base.x_slot_stride = s.x_slot_stride;
  base.y = dy.get();
  base.y_slot_stride = s.y_slot_stride;
  base.n_slots = s.n_slots;
  base.n_rows = s.n_rows;
  base.slot_row_stride = s.slot_row_stride;
  base.swiglu_limit = s.limit;
  base.accumulate = s.accumulate;
  base.x_norm_weight = s.norm ? dn.get() : nullptr;
  const auto dense = [&](const DenseMatvecOptions& o) {
    return time_chain([&](int k, cudaStream_t st) {
      DenseMatvecLaunch l = base;
      l.fixed_matrix = k % copies;
      return launch_dense_matvec(l, st, o);
    });
  };
  const double matvec_us = time_chain([&](int k, cudaStream_t st) {
    DenseMatvecLaunch l = base;
    l.fixed_matrix = k % copies;
    MatvecLaunch m = matvec_launch(l);
    m.split_workspace = split.get();  // as forward.cu's plain projections pass it
    m.split_workspace_floats = 32 * 8192;
    return launch_matvec(m, st);
  });
  const double bytes = s.bytes();
  const auto pct = [&](double us) { return 100.0 * bytes / (us * 1e-6) / bandwidth; };
  const auto line = [&](const std::string& variant, double us) {
    if (us < 0) {
      std::printf("bench dense %-26s %-44s failed\n", s.name.c_str(), variant.c_str());
      return;
    }
    std::printf("bench dense %-26s %-44s %6.2f MB %7.2f us %6.0f GB/s (%3.0f%% of read bandwidth)  "
                "launch_matvec %7.2f us (%3.0f%%)  x%.2f\n",
                s.name.c_str(), variant.c_str(), bytes / 1e6, us, bytes / (us * 1e-6) / 1e9, pct(us), matvec_us,
                pct(matvec_us), matvec_us / us);
  };
  DenseMatvecOptions registers, stream;
  registers.kernel = DenseKernel::kRegisters;
  stream.kernel = DenseKernel::kStream;
  const double registers_us = dense(registers);
  const double stream_us = dense(stream);
  line("registers default", registers_us);
  line("stream default", stream_us);
  double best_us = -1;
  std::string best;
  for (const DenseMatvecOptions& o : all_options(s.paired, s.type)) {
    const double us = dense(o);
    line(options_name(o), us);
    if (us > 0 && (best_us < 0 || us < best_us)) {
      best_us = us;
      best = options_name(o);
    }
  }
  const bool was = pdl_enabled();
  set_pdl_enabled(false);
  line("registers default, PDL off", dense(registers));
  line("stream default, PDL off", dense(stream));
  set_pdl_enabled(was);
  std::printf("summary dense %-26s %6.2f MB: registers %7.2f us (%3.0f%%), stream %7.2f us (%3.0f%%), "
              "launch_matvec %7.2f us; fastest %s %7.2f us (%3.0f%%)\n",
              s.name.c_str(), bytes / 1e6, registers_us, pct(registers_us), stream_us, pct(stream_us), matvec_us,
              best.c_str(), best_us, pct(best_us));
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  std::printf("PDL %s\n", pdl_enabled() ? "on" : "off (device below sm_90 or DS4_CUDA_PDL=0)");
  std::mt19937 rng(20261129);
  for (const Shape& s : shapes()) {
    Case c;
    if (!make_case(s, rng, &c)) continue;
    test_case(c);
    if (s.time || s.accumulate) {
      test_repeat(c, DenseKernel::kRegisters);
      test_repeat(c, DenseKernel::kStream);
    }
  }
  test_refusals();
  test_stream_fallback(rng);
  Result<double> bw = measure_read_bandwidth(size_t{2304} << 20, 5);
  check(bw.ok(), "read bandwidth measured");
  if (bw.ok()) {
    std::printf("read bandwidth %.0f GB/s (2.25 GiB read kernel, best of 5)\n", *bw / 1e9);
    for (const Shape& s : shapes()) {
      if (s.time) bench_shape(s, *bw);
    }
  }
  return finish("dense_matvec_test");
}
