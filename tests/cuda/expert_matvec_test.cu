// The routed-expert decode kernels (cuda/expert_matvec.h) against a CPU reference built
// from format/quant.h dequantization with double sums, on fresh random valid IQ2_XXS /
// Q2_K stacks of the real shapes (16 experts of 2048 x 4096 gate/up, 4096 x 2048 down)
// and of the tiny fixtures (8 experts of 256 x 256), random x, random distinct ids and
// routing weights: every output element is checked (outputs filled with NaN beforehand,
// so an element never written fails), with bounds derived from the f32 summation (f32
// kernels) or from the header's precision statement for the integer tensor-core kernels
// (x's rounding to 30-bit integers per 256 columns, then (n + 24) u sum |w x|), for
// several SwiGLU limits (infinite included) and every tuning option; the same inputs
// through launch_matvec (the generic kernel forward.cu ran) agree within the sum of both
// bounds. The down projection is checked adding into y and storing. The worst error of
// each variant is printed against its bound and, for the tensor-core kernels, also
// against the f32 kernels' bound.
// The staged kernels (ExpertMatvecOptions::staged) are also checked bit for bit against the
// tensor-core kernels' default split, at both shapes, every output element, and routing
// inside the staged gate+up against the router kernel then the same launch (16 and 256
// experts, biased and hash routing).
// Then the process's first launch made inside a graph capture, the bad launches the API
// refuses, bit-identical repeats (direct and graph), and timings: each variant as a chain of
// 40 launches in one CUDA graph (PDL edges) over the full 256-expert stacks (eight disjoint
// expert sets in turn, so weights come from device memory, not L2), replayed for 200
// launches, in us per launch, GB/s and % of the read bandwidth measured in the same run,
// beside launch_matvec's time for the same launch; a summary line per kernel compares the
// staged kernel with the tensor-core kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/bandwidth.h"
#include "cuda/device_model.h"
#include "cuda/expert_matvec.h"
#include "cuda/matvec.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

constexpr int64_t kDim = 4096;  // MODEL.md: hidden size
constexpr int64_t kFfn = 2048;  // routed expert width
constexpr int64_t kTinyDim = 256;  // the tiny fixtures: dim 256, expert_ffn 256, 8 experts
constexpr int64_t kTinyFfn = 256;
constexpr int kUsed = 6;
constexpr double kUnit = 1.0 / 16777216.0;  // 2^-24, f32 unit roundoff
// Terms of one f32 sum path in the kernels: 32 in a chunk, the chunk factor, 5 lane
// levels, up to 12 warps, the final add; with a factor of ~2.5 of margin.
constexpr double kSumRel = 128 * kUnit;

// The tensor-core kernels' relative rounding bound (header): (n + 24) u, n the 256-column
// terms added per output.
double tc_rel(int64_t terms) { return static_cast<double>(terms + 24) * kUnit; }

// The scale s_b the tensor-core kernels give 256 values of x (header): 2^(E - 30) with
// max |x| < 2^E, E at least -96.
double tc_block_scale(const float* x) {
  float m = 0.0f;
  for (int i = 0; i < 256; ++i) m = std::max(m, std::fabs(x[i]));
  int e = 0;
  std::frexp(m, &e);
  e = std::max(e, -96);
  return std::ldexp(1.0, e - 30);
}

struct HostStack {
  GgmlType type;
  int64_t cols, rows, count;
  std::vector<uint8_t> bytes;
  const uint8_t* row(int64_t matrix, int64_t r) const {
    return bytes.data() + (matrix * rows + r) * ggml_row_bytes(type, cols);
  }
};

std::vector<int32_t> distinct_ids(int n, int pool, std::mt19937& rng) {
  std::vector<int32_t> all(pool);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  return all;
}

// Dot products of rows with x in double, and the sums of the magnitudes of the terms the
// kernels add (for Q2_K: |a q x| and |m x| apart, as the kernel forms a sum(q x) - m sum(x)).
struct RowDots {
  std::vector<double> dot, mag;
};

void q2k_magnitudes(const uint8_t* row, int64_t cols, std::vector<double>* out) {
  out->assign(cols, 0.0);
  for (int64_t b = 0; b < cols / 256; ++b) {
    const uint8_t* blk = row + b * 84;
    uint16_t dh, mh;
    std::memcpy(&dh, blk + 80, 2);
    std::memcpy(&mh, blk + 82, 2);
    const double d = fp16_to_f32(dh), dmin = fp16_to_f32(mh);
    for (int e = 0; e < 256; ++e) {
      const int hh = e / 128, j = (e % 128) / 32, l = e % 32;
      const uint8_t sc = blk[8 * hh + 2 * j + (l >= 16)];
      const int q = (blk[16 + 32 * hh + l] >> (2 * j)) & 3;
      (*out)[b * 256 + e] = std::fabs(d * (sc & 15) * q) + std::fabs(dmin * (sc >> 4));
    }
  }
}

// Adds to *dot the row's product with x, to *mag the sum of |w x| and to *qerr the bound
// on what rounding x to the tensor-core kernels' integers changes: sum |w| s_b / 2.
void row_dot(const HostStack& h, int64_t matrix, int64_t r, const float* x, double* dot, double* mag,
             double* qerr) {
  std::vector<float> w(h.cols);
  dequantize_row(h.type, h.row(matrix, r), w.data(), h.cols);
  std::vector<double> m;
  if (h.type == GgmlType::Q2_K) q2k_magnitudes(h.row(matrix, r), h.cols, &m);
  double s = 0, a = 0, q = 0;
  for (int64_t b = 0; b < h.cols / 256; ++b) {
    const double half_scale = tc_block_scale(x + b * 256) / 2;
    double wsum = 0;
    for (int64_t i = b * 256; i < (b + 1) * 256; ++i) {
      const double wm = m.empty() ? std::fabs(static_cast<double>(w[i])) : m[i];
      s += static_cast<double>(w[i]) * x[i];
      a += wm * std::fabs(static_cast<double>(x[i]));
      wsum += wm;
    }
    q += wsum * half_scale;
  }
  *dot += s;
  *mag += a;
  *qerr += q;
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

double swiglu_ref(double g, double u, double limit) {
  g = std::min(g, limit);
  u = std::min(std::max(u, -limit), limit);
  return silu(g) * u;
}

// Bound on |gpu - exact| of one gate+up output from the bounds on g and u.
double swiglu_bound(double g, double u, double tg, double tu, double limit, double weight) {
  const double gc = std::min(g, limit), uc = std::min(std::max(u, -limit), limit);
  const double y = silu(gc) * uc * weight;
  return weight * (1.1 * tg * std::fabs(uc) + std::fabs(silu(gc)) * tu + 1.1 * tg * tu) + 16 * kUnit * std::fabs(y) +
         1e-30;
}

std::string options_name(const ExpertMatvecOptions& o) {
  if (o.tensor_cores && o.staged) {
    return std::string("staged") + (o.tc_lane_tables ? " lane tables" : " compact table") +
           (o.staged_stages ? " stages=" + std::to_string(o.staged_stages) : "") +
           (o.staged_warps ? " warps=" + std::to_string(o.staged_warps) : "") +
           (o.staged_tiles ? " tiles/block=" + std::to_string(o.staged_tiles) : "") +
           (o.staged_blocks_ahead == 1 ? std::string()
            : o.staged_blocks_ahead ? " blocks ahead=" + std::to_string(o.staged_blocks_ahead)
                                    : std::string(" blocks ahead=all")) +
           (o.blocks_per_sm ? " blocks/SM=" + std::to_string(o.blocks_per_sm) : "");
  }
  if (o.tensor_cores) {
    return std::string("tensor cores") + (o.tc_lane_tables ? " lane tables" : " compact table") +
           (o.prefetch ? " prefetch" : "") + (o.blocks_per_sm ? " blocks/SM=" + std::to_string(o.blocks_per_sm) : "") +
           (o.tc_blocks_per_warp ? " 256-col blocks/warp=" + std::to_string(o.tc_blocks_per_warp) : "");
  }
  return "f32 rows/batch=" + std::to_string(o.rows_per_batch) + (o.lane_tables ? " lane tables" : " compact table") +
         (o.prefetch ? " prefetch" : "") +
         (o.blocks_per_sm ? " blocks/SM=" + std::to_string(o.blocks_per_sm) : "");
}

// The staged kernels' variants: for gate+up every ring depth with and without the per-bank
// tables and two block sizes; for down the default and one tile per block.
std::vector<ExpertMatvecOptions> staged_options(bool gate_up) {
  std::vector<ExpertMatvecOptions> out;
  ExpertMatvecOptions base;
  base.tensor_cores = true;
  base.staged = true;
  if (!gate_up) {
    out.push_back(base);
    ExpertMatvecOptions one = base;
    one.staged_tiles = 1;
    out.push_back(one);
    for (int ahead : {0, 2}) {  // all of a warp's blocks at once, two (the default: one)
      ExpertMatvecOptions o = base;
      o.staged_blocks_ahead = ahead;
      out.push_back(o);
    }
    return out;
  }
  for (bool lane : {true, false}) {
    for (int stages : {0, 2, 4, 8}) {
      ExpertMatvecOptions o = base;
      o.tc_lane_tables = lane;
      o.staged_stages = stages;
      out.push_back(o);
    }
  }
  for (int warps : {8, 16}) {
    ExpertMatvecOptions o = base;
    o.staged_warps = warps;
    out.push_back(o);
  }
  return out;
}

// The tensor-core kernels' default split (staged off): what the staged kernels must match bit
// for bit.
ExpertMatvecOptions tc_reference_options() {
  ExpertMatvecOptions o;
  o.tensor_cores = true;
  o.staged = false;
  o.tc_blocks_per_warp = 0;
  return o;
}

// Every variant: the f32 kernels' (when `f32`), the tensor-core kernels' (with
// `tc_blocks_per_warp`, when not 0, as one more) and the staged kernels' (gate+up's or down's).
std::vector<ExpertMatvecOptions> all_options(bool f32, int tc_blocks_per_warp, bool gate_up) {
  std::vector<ExpertMatvecOptions> out;
  if (f32) {
    for (int r : {4, 8}) {
      for (bool lane : {true, false}) {
        for (bool prefetch : {true, false}) {
          ExpertMatvecOptions o;
          o.tensor_cores = false;
          o.rows_per_batch = r;
          o.lane_tables = lane;
          o.prefetch = prefetch;
          out.push_back(o);
        }
      }
    }
    ExpertMatvecOptions one;
    one.tensor_cores = false;
    one.blocks_per_sm = 1;
    out.push_back(one);
  }
  for (bool lane : {true, false}) {
    for (bool prefetch : {true, false}) {
      ExpertMatvecOptions o;
      o.tensor_cores = true;
      o.staged = false;
      o.tc_lane_tables = lane;
      o.prefetch = prefetch;
      out.push_back(o);
    }
  }
  ExpertMatvecOptions one;
  one.tensor_cores = true;
  one.staged = false;
  one.blocks_per_sm = 1;
  out.push_back(one);
  if (tc_blocks_per_warp) {
    ExpertMatvecOptions cb;
    cb.tensor_cores = true;
    cb.staged = false;
    cb.tc_blocks_per_warp = tc_blocks_per_warp;
    out.push_back(cb);
  }
  for (const ExpertMatvecOptions& o : staged_options(gate_up)) out.push_back(o);
  return out;
}

// The variants of each kernel at the real shapes: gate+up also with 512 columns per warp,
// down also with 2048 (one warp per expert).
std::vector<ExpertMatvecOptions> gate_up_options() { return all_options(true, 2, true); }
std::vector<ExpertMatvecOptions> down_options() { return all_options(true, 8, false); }

struct Fixture {
  int64_t dim = kDim, ffn = kFfn;
  HostStack gate, up, down;
  std::unique_ptr<OwnedDeviceMatrix> dg, du, dd;
  std::vector<int32_t> ids;
  std::vector<float> weights, x, h;  // h: a SwiGLU-like input of the down projection
};

// A gate+up launch of kUsed experts of `gate` and `up` (weights null: 1; limit INFINITY:
// no clamp).
ExpertGateUpLaunch gate_up_launch(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x, const int32_t* ids,
                                  const float* weights, float limit, float* y) {
  ExpertGateUpLaunch l;
  l.gate = &gate;
  l.up = &up;
  l.x = x;
  l.ids = ids;
  l.weights = weights;
  l.n_used = kUsed;
  l.swiglu_limit = limit;
  l.y = y;
  return l;
}

bool make_fixture(int64_t dim, int64_t ffn, int count, std::mt19937& rng, Fixture* f) {
  f->dim = dim;
  f->ffn = ffn;
  f->gate = {GgmlType::IQ2_XXS, dim, ffn, count, random_blocks(GgmlType::IQ2_XXS, ffn * count, dim, rng)};
  f->up = {GgmlType::IQ2_XXS, dim, ffn, count, random_blocks(GgmlType::IQ2_XXS, ffn * count, dim, rng)};
  f->down = {GgmlType::Q2_K, ffn, dim, count, random_blocks(GgmlType::Q2_K, dim * count, ffn, rng)};
  auto g = upload_matrix(GgmlType::IQ2_XXS, dim, ffn, count, f->gate.bytes.data());
  auto u = upload_matrix(GgmlType::IQ2_XXS, dim, ffn, count, f->up.bytes.data());
  auto d = upload_matrix(GgmlType::Q2_K, ffn, dim, count, f->down.bytes.data());
  check(g.ok() && u.ok() && d.ok(), "upload of the expert stacks");
  if (!g.ok() || !u.ok() || !d.ok()) return false;
  f->dg = std::move(*g);
  f->du = std::move(*u);
  f->dd = std::move(*d);
  f->ids = distinct_ids(kUsed, count, rng);
  f->weights = random_floats(kUsed, rng, 0.1f, 1.0f);
  f->x = random_floats(dim, rng, -3.0f, 3.0f);
  // One block of x (of several) and of h with a much smaller range than the others: the
  // tensor-core kernels' per-256-column scales differ.
  if (dim > 256) {
    for (int64_t i = 0; i < 256; ++i) f->x[i] *= 1e-3f;
  }
  f->h = random_floats(kUsed * ffn, rng, -2.0f, 2.0f);
  for (int64_t i = 0; i < 256; ++i) f->h[i] *= 1e-2f;
  return true;
}

// The bound on |gpu - exact| of one product for a variant: f32 kernels kSumRel sum |w x|;
// tensor-core kernels the header's statement.
double product_bound(const ExpertMatvecOptions& o, double mag, double qerr, int64_t terms) {
  return o.tensor_cores ? qerr + tc_rel(terms) * mag : kSumRel * mag;
}

// gate+up for every limit and option, against the CPU and launch_matvec.
void test_gate_up(const Fixture& f, const std::vector<ExpertMatvecOptions>& options, const std::string& label) {
  const int64_t n_out = kUsed * f.ffn;
  const int64_t terms = f.dim / 256;
  std::vector<double> g(n_out, 0), ga(n_out, 0), gq(n_out, 0), u(n_out, 0), ua(n_out, 0), uq(n_out, 0);
  for (int s = 0; s < kUsed; ++s) {
    for (int64_t r = 0; r < f.ffn; ++r) {
      const int64_t i = s * f.ffn + r;
      row_dot(f.gate, f.ids[s], r, f.x.data(), &g[i], &ga[i], &gq[i]);
      row_dot(f.up, f.ids[s], r, f.x.data(), &u[i], &ua[i], &uq[i]);
    }
  }
  DeviceVec<float> dx(f.x), dw(f.weights), dy(n_out), dref(n_out);
  DeviceVec<int32_t> dids(f.ids);
  for (float limit : {INFINITY, 10.0f, 0.5f, 0.05f}) {
    int clamped = 0;
    for (size_t i = 0; i < u.size(); ++i) clamped += std::fabs(u[i]) > limit || g[i] > limit;
    if (std::isfinite(limit) && limit < 1.0f) {
      check(clamped > 0, label + "gate+up limit " + std::to_string(limit) + ": the clamp is exercised (" +
                             std::to_string(clamped) + " outputs)");
    }
    // The generic kernel, as forward.cu launched it.
    MatvecLaunch mv;
    mv.w = &f.dg->m;
    mv.w_up = &f.du->m;
    mv.x = dx.get();
    mv.y = dref.get();
    mv.y_slot_stride = f.ffn;
    mv.n_slots = kUsed;
    mv.slot_matrix = dids.get();
    mv.slot_weight = dw.get();
    mv.swiglu_limit = limit;
    mv.lanes_per_row = 8;
    Status ms = launch_matvec(mv, nullptr);
    check(ms.ok(), label + "gate+up matvec launch: " + ms.message());
    check(cudaDeviceSynchronize() == cudaSuccess, label + "gate+up matvec kernel");
    const std::vector<float> ref = dref.host();
    for (const ExpertMatvecOptions& o : options) {
      const std::string name = label + "gate+up limit " + std::to_string(limit) + " " + options_name(o);
      cudaMemset(dy.get(), 0xFF, sizeof(float) * n_out);  // NaN: unwritten outputs fail
      ExpertGateUpLaunch l = gate_up_launch(f.dg->m, f.du->m, dx.get(), dids.get(), dw.get(), limit, dy.get());
      Status s = launch_expert_gate_up(l, nullptr, o);
      check(s.ok(), name + ": launch: " + s.message());
      check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernel failed");
      const std::vector<float> y = dy.host();
      int bad = 0, bad_mv = 0;
      double worst = 0, worst_f32 = 0;
      for (int sl = 0; sl < kUsed; ++sl) {
        for (int64_t r = 0; r < f.ffn; ++r) {
          const int64_t i = sl * f.ffn + r;
          const double want = swiglu_ref(g[i], u[i], limit) * f.weights[sl];
          const double tol = swiglu_bound(g[i], u[i], product_bound(o, ga[i], gq[i], terms),
                                          product_bound(o, ua[i], uq[i], terms), limit, f.weights[sl]);
          const double tol_f32 = swiglu_bound(g[i], u[i], kSumRel * ga[i], kSumRel * ua[i], limit, f.weights[sl]);
          const double err = std::fabs(y[i] - want);
          if (!(err <= tol)) {
            if (bad++ < 4) {
              std::printf("  %s: slot %d (expert %d) row %lld: got %.9g expected %.9g (|d| %.3g > bound %.3g; "
                          "gate %.9g up %.9g)\n",
                          name.c_str(), sl, f.ids[sl], static_cast<long long>(r), y[i], want, err, tol, g[i], u[i]);
            }
          } else {
            worst = std::max(worst, err / tol);
            worst_f32 = std::max(worst_f32, err / tol_f32);
          }
          const double tol_mv = tol + tol_f32;
          if (!(std::fabs(y[i] - ref[i]) <= tol_mv) && bad_mv++ < 4) {
            std::printf("  %s: slot %d row %lld: got %.9g, launch_matvec %.9g (bound %.3g)\n", name.c_str(), sl,
                        static_cast<long long>(r), y[i], ref[i], tol_mv);
          }
        }
      }
      check(bad == 0, name + ": " + std::to_string(bad) + " of " + std::to_string(n_out) +
                          " outputs outside the bound against the CPU");
      check(bad_mv == 0, name + ": " + std::to_string(bad_mv) + " outputs differ from launch_matvec");
      std::printf("check %-64s worst |d|/bound %.3f (against the f32 bound %.3f)\n", name.c_str(), worst, worst_f32);
    }
  }
}

// down, adding into y and storing, for every option, against the CPU and launch_matvec.
void test_down(const Fixture& f, const std::vector<ExpertMatvecOptions>& options, const std::string& label,
               std::mt19937& rng) {
  const int64_t terms = kUsed * f.ffn / 256;
  std::vector<double> v(f.dim, 0), va(f.dim, 0), vq(f.dim, 0);
  for (int s = 0; s < kUsed; ++s) {
    for (int64_t r = 0; r < f.dim; ++r) row_dot(f.down, f.ids[s], r, f.h.data() + s * f.ffn, &v[r], &va[r], &vq[r]);
  }
  const std::vector<float> y0 = random_floats(f.dim, rng, -1.0f, 1.0f);
  DeviceVec<float> dh(f.h), dy(f.dim), dref(f.dim);
  DeviceVec<int32_t> dids(f.ids);
  cudaMemcpy(dref.get(), y0.data(), sizeof(float) * f.dim, cudaMemcpyHostToDevice);
  MatvecLaunch mv;
  mv.w = &f.dd->m;
  mv.x = dh.get();
  mv.x_slot_stride = f.ffn;
  mv.y = dref.get();
  mv.n_slots = kUsed;
  mv.slot_matrix = dids.get();
  mv.sum_slots = true;
  mv.accumulate = true;
  mv.lanes_per_row = 16;
  Status ms = launch_matvec(mv, nullptr);
  check(ms.ok(), label + "down matvec launch: " + ms.message());
  check(cudaDeviceSynchronize() == cudaSuccess, label + "down matvec kernel");
  const std::vector<float> ref = dref.host();
  for (bool accumulate : {true, false}) {
    for (const ExpertMatvecOptions& o : options) {
      const std::string name = label + "down " + (accumulate ? "y += " : "y = ") + options_name(o);
      if (accumulate) {
        cudaMemcpy(dy.get(), y0.data(), sizeof(float) * f.dim, cudaMemcpyHostToDevice);
      } else {
        cudaMemset(dy.get(), 0xFF, sizeof(float) * f.dim);  // NaN
      }
      ExpertDownLaunch l;
      l.down = &f.dd->m;
      l.x = dh.get();
      l.ids = dids.get();
      l.n_used = kUsed;
      l.accumulate = accumulate;
      l.y = dy.get();
      Status s = launch_expert_down(l, nullptr, o);
      check(s.ok(), name + ": launch: " + s.message());
      check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernel failed");
      const std::vector<float> y = dy.host();
      int bad = 0, bad_mv = 0;
      double worst = 0, worst_f32 = 0;
      for (int64_t r = 0; r < f.dim; ++r) {
        const double base = accumulate ? y0[r] : 0.0;
        const double want = base + v[r];
        const double final_add = 2 * kUnit * (std::fabs(base) + std::fabs(want)) + 1e-30;
        const double tol = product_bound(o, va[r], vq[r], terms) + final_add;
        const double tol_f32 = kSumRel * va[r] + final_add;
        const double err = std::fabs(y[r] - want);
        if (!(err <= tol)) {
          if (bad++ < 4) {
            std::printf("  %s: row %lld: got %.9g expected %.9g (y before %.9g, |d| %.3g > bound %.3g)\n",
                        name.c_str(), static_cast<long long>(r), y[r], want, base, err, tol);
          }
        } else {
          worst = std::max(worst, err / tol);
          worst_f32 = std::max(worst_f32, err / tol_f32);
        }
        const double ref_r = accumulate ? ref[r] : ref[r] - y0[r];
        const double tol_mv = tol + tol_f32 + 2 * kUnit * std::fabs(y0[r]);
        if (!(std::fabs(y[r] - ref_r) <= tol_mv) && bad_mv++ < 4) {
          std::printf("  %s: row %lld: got %.9g, launch_matvec %.9g (bound %.3g)\n", name.c_str(),
                      static_cast<long long>(r), y[r], ref_r, tol_mv);
        }
      }
      check(bad == 0, name + ": " + std::to_string(bad) + " of " + std::to_string(f.dim) +
                          " outputs outside the bound against the CPU");
      check(bad_mv == 0, name + ": " + std::to_string(bad_mv) + " outputs differ from launch_matvec");
      std::printf("check %-64s worst |d|/bound %.3f (against the f32 bound %.3f)\n", name.c_str(), worst, worst_f32);
    }
  }
}

// Elements of `got` whose bits differ from `want`; the first few printed with their index.
int bit_differences(const std::vector<float>& got, const std::vector<float>& want, const std::string& name,
                    int64_t row_length) {
  int bad = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b && bad++ < 4) {
      std::printf("  %s: element %zu (slot %lld row %lld): got %.9g (0x%08x), tensor-core kernel %.9g (0x%08x)\n",
                  name.c_str(), i, static_cast<long long>(i / row_length), static_cast<long long>(i % row_length),
                  got[i], a, want[i], b);
    }
  }
  return bad + static_cast<int>(got.size() != want.size());
}

// Routing inside the staged gate+up (ExpertGateUpLaunch::route) against the router kernel
// followed by the same launch: ids, weights and every output bit for bit, for biased top-k
// (a tie and a NaN among the logits) and hash routing, at two SwiGLU limits, over
// `n_experts` experts of the fixture's stacks. `inside`: whether these options must route
// inside the kernel (else the launch must take the router kernel first).
void test_router_fold(const Fixture& f, int n_experts, const ExpertMatvecOptions& o, bool inside,
                      const std::string& label) {
  std::mt19937 rng(11);
  std::vector<float> logits = random_floats(n_experts, rng, -4.0f, 4.0f);
  std::vector<float> bias = random_floats(n_experts, rng, -0.5f, 0.5f);
  logits[3] = logits[5];  // a tie: the lower index first
  bias[3] = bias[5];
  logits[n_experts - 1] = NAN;  // never chosen
  constexpr int kVocab = 4;
  std::vector<int32_t> table;
  for (int t = 0; t < kVocab; ++t) {
    const std::vector<int32_t> row = distinct_ids(kUsed, n_experts, rng);
    table.insert(table.end(), row.begin(), row.end());
  }
  const int64_t n_out = kUsed * f.ffn;
  DeviceVec<float> dlogits(logits), dbias(bias), dx(f.x), dya(n_out), dyb(n_out), dwa(kUsed), dwb(kUsed);
  DeviceVec<int32_t> dtable(table), dtoken(std::vector<int32_t>{2}), dia(kUsed), dib(kUsed);
  for (bool hash : {false, true}) {
    for (float limit : {INFINITY, 0.5f}) {
      const std::string name = label + "routing inside gate+up, " + std::to_string(n_experts) + " experts, " +
                               (hash ? "hash" : "biased top-k") + ", limit " + std::to_string(limit) + ", " +
                               options_name(o);
      RouterLaunch r;
      r.logits = dlogits.get();
      r.n_experts = n_experts;
      r.n_used = kUsed;
      r.bias = hash ? nullptr : dbias.get();
      r.tid2eid = hash ? dtable.get() : nullptr;
      r.token = dtoken.get();
      r.route_scale = 2.5f;
      r.route_norm = true;
      RouterLaunch ra = r, rb = r;
      ra.ids = dia.get();
      ra.weights = dwa.get();
      rb.ids = dib.get();
      rb.weights = dwb.get();
      ExpertGateUpLaunch a = gate_up_launch(f.dg->m, f.du->m, dx.get(), dia.get(), dwa.get(), limit, dya.get());
      ExpertGateUpLaunch b = a;
      b.ids = nullptr;
      b.weights = nullptr;
      b.route = &rb;
      b.y = dyb.get();
      check(expert_gate_up_routes_inside(b, o) == inside,
            name + (inside ? ": expected to route inside the kernel" : ": expected the router kernel first"));
      for (DeviceVec<float>* y : {&dya, &dyb}) cudaMemset(y->get(), 0xFF, sizeof(float) * n_out);
      cudaMemset(dib.get(), 0xFF, sizeof(int32_t) * kUsed);
      cudaMemset(dwb.get(), 0xFF, sizeof(float) * kUsed);
      Status st = launch_router(ra, nullptr);
      if (st.ok()) st = launch_expert_gate_up(a, nullptr, o);
      check(st.ok(), name + ": router kernel then gate+up: " + st.message());
      st = launch_expert_gate_up(b, nullptr, o);
      check(st.ok(), name + ": gate+up routing itself: " + st.message());
      check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernels failed");
      const std::vector<int32_t> ids_a = dia.host(), ids_b = dib.host();
      check(ids_a == ids_b, name + ": expert ids differ (first: " + std::to_string(ids_a[0]) + " vs " +
                                std::to_string(ids_b[0]) + ")");
      check(bit_differences(dwb.host(), dwa.host(), name + " weights", kUsed) == 0, name + ": routing weights differ");
      const int bad = bit_differences(dyb.host(), dya.host(), name, f.ffn);
      check(bad == 0, name + ": outputs differ from the router kernel's path (" + std::to_string(bad) + " of " +
                          std::to_string(n_out) + ")");
    }
  }
}

// The staged kernels against the tensor-core kernels' default split (down without early
// loads, as the decode runs it): every output bit for bit, gate+up at two limits, down adding
// and storing.
void test_staged_bits(const Fixture& f, const std::string& label) {
  const int64_t n_out = kUsed * f.ffn;
  DeviceVec<float> dx(f.x), dw(f.weights), dh(f.h), dy(n_out), dz(f.dim);
  DeviceVec<int32_t> dids(f.ids);
  for (float limit : {INFINITY, 0.5f}) {
    ExpertGateUpLaunch l = gate_up_launch(f.dg->m, f.du->m, dx.get(), dids.get(), dw.get(), limit, dy.get());
    const auto run = [&](const ExpertMatvecOptions& o, const std::string& name) {
      cudaMemset(dy.get(), 0xFF, sizeof(float) * n_out);
      const Status st = launch_expert_gate_up(l, nullptr, o);
      check(st.ok(), name + ": launch: " + st.message());
      check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernel failed");
      return dy.host();
    };
    const std::string what = label + "gate+up limit " + std::to_string(limit) + " ";
    const std::vector<float> want = run(tc_reference_options(), what + "tensor cores");
    for (const ExpertMatvecOptions& o : staged_options(true)) {
      const std::string name = what + options_name(o);
      const int bad = bit_differences(run(o, name), want, name, f.ffn);
      check(bad == 0, name + ": bit for bit the tensor-core kernel's outputs (" + std::to_string(bad) + " of " +
                          std::to_string(n_out) + " differ)");
    }
  }
  std::mt19937 rng(5);
  const std::vector<float> y0 = random_floats(f.dim, rng, -1.0f, 1.0f);
  for (bool accumulate : {true, false}) {
    ExpertDownLaunch l;
    l.down = &f.dd->m;
    l.x = dh.get();
    l.ids = dids.get();
    l.n_used = kUsed;
    l.accumulate = accumulate;
    l.y = dz.get();
    const auto run = [&](const ExpertMatvecOptions& o, const std::string& name) {
      if (accumulate) {
        cudaMemcpy(dz.get(), y0.data(), sizeof(float) * f.dim, cudaMemcpyHostToDevice);
      } else {
        cudaMemset(dz.get(), 0xFF, sizeof(float) * f.dim);
      }
      const Status st = launch_expert_down(l, nullptr, o);
      check(st.ok(), name + ": launch: " + st.message());
      check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernel failed");
      return dz.host();
    };
    const std::string what = label + "down " + (accumulate ? "y += " : "y = ");
    ExpertMatvecOptions reference = tc_reference_options();
    reference.prefetch = false;
    const std::vector<float> want = run(reference, what + "tensor cores");
    for (const ExpertMatvecOptions& o : staged_options(false)) {
      const std::string name = what + options_name(o);
      const int bad = bit_differences(run(o, name), want, name, f.dim);
      check(bad == 0, name + ": bit for bit the tensor-core kernel's outputs (" + std::to_string(bad) + " of " +
                          std::to_string(f.dim) + " differ)");
    }
  }
}

// The tiny fixtures' shapes: the tensor-core kernels serve them (expert_*_supported Ok with
// the default options); the f32 kernels alone refuse them with a message.
void test_tiny_support(const Fixture& f) {
  DeviceVec<float> dx(f.x), dh(f.h), dy(kUsed * f.ffn), dz(f.dim);
  DeviceVec<int32_t> dids(f.ids);
  ExpertGateUpLaunch gu = gate_up_launch(f.dg->m, f.du->m, dx.get(), dids.get(), nullptr, INFINITY, dy.get());
  ExpertDownLaunch dn;
  dn.down = &f.dd->m;
  dn.x = dh.get();
  dn.ids = dids.get();
  dn.n_used = kUsed;
  dn.y = dz.get();
  const Status gs = expert_gate_up_supported(gu), ds = expert_down_supported(dn);
  check(gs.ok(), "tiny: gate+up supported (" + std::to_string(f.dim) + " columns): " + gs.message());
  check(ds.ok(), "tiny: down supported (" + std::to_string(f.ffn) + " columns): " + ds.message());
  ExpertMatvecOptions f32;
  f32.tensor_cores = false;
  const Status gr = launch_expert_gate_up(gu, nullptr, f32), dr = launch_expert_down(dn, nullptr, f32);
  const auto said = [](const Status& st) { return st.ok() ? std::string(" (was accepted)") : ": " + st.message(); };
  check(!gr.ok() && !gr.message().empty(), "tiny: the f32 gate+up kernel refuses 256 columns" + said(gr));
  check(!dr.ok() && !dr.message().empty(), "tiny: the f32 down kernel refuses 256 columns" + said(dr));
  check(cudaDeviceSynchronize() == cudaSuccess, "tiny: refusals left no failed kernel");
}

// Launches the API must refuse, each with a message.
void test_refusals(const Fixture& f) {
  DeviceVec<float> dx(kDim + 4), dy(kUsed * kFfn);
  DeviceVec<int32_t> dids(f.ids);
  ExpertGateUpLaunch l = gate_up_launch(f.dg->m, f.du->m, dx.get(), dids.get(), nullptr, INFINITY, dy.get());
  const auto refused = [](const Status& s, const std::string& what) {
    check(!s.ok() && !s.message().empty(), "refused: " + what + (s.ok() ? " (was accepted)" : ": " + s.message()));
  };
  ExpertGateUpLaunch bad = l;
  bad.gate = &f.dd->m;
  refused(launch_expert_gate_up(bad, nullptr), "gate+up with Q2_K weights");
  bad = l;
  bad.x = dx.get() + 1;
  refused(launch_expert_gate_up(bad, nullptr), "gate+up with x not 16-byte aligned");
  bad = l;
  bad.n_used = 0;
  refused(launch_expert_gate_up(bad, nullptr), "gate+up with no experts");
  bad = l;
  bad.n_used = static_cast<int>(f.dg->m.count) + 1;
  refused(launch_expert_gate_up(bad, nullptr), "gate+up with more experts than the stack");
  ExpertMatvecOptions o;
  o.rows_per_batch = 3;
  refused(launch_expert_gate_up(l, nullptr, o), "rows_per_batch 3");
  ExpertMatvecOptions cb;
  cb.tc_blocks_per_warp = 3;
  refused(launch_expert_gate_up(l, nullptr, cb), "tc_blocks_per_warp 3");
  cb.tc_blocks_per_warp = 8;
  refused(launch_expert_gate_up(l, nullptr, cb), "gate+up with 8 x 256 columns per warp");
  ExpertDownLaunch d;
  d.down = &f.dg->m;
  d.x = dx.get();
  d.ids = dids.get();
  d.n_used = kUsed;
  d.y = dy.get();
  refused(launch_expert_down(d, nullptr), "down with IQ2_XXS weights");
  d.down = &f.dd->m;
  d.n_used = 17;
  refused(launch_expert_down(d, nullptr), "down with more experts than the stack");
  check(cudaDeviceSynchronize() == cudaSuccess, "refusals left no failed kernel");
}

// The process's first expert launch made while its stream is being captured (as a decode
// graph recorded on the first token is): the one-time setup must not break the capture,
// and the replayed graph must give what a direct launch gives, bit for bit.
void test_first_launch_captured(const Fixture& f) {
  DeviceVec<float> dx(f.x), dw(f.weights), dy(kUsed * kFfn), dy2(kUsed * kFfn);
  DeviceVec<int32_t> dids(f.ids);
  ExpertGateUpLaunch l = gate_up_launch(f.dg->m, f.du->m, dx.get(), dids.get(), dw.get(), 10.0f, dy.get());
  cudaMemset(dy.get(), 0xFF, sizeof(float) * kUsed * kFfn);
  cudaDeviceSynchronize();
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  const cudaError_t begin = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
  const Status s = launch_expert_gate_up(l, stream);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  check(begin == cudaSuccess, std::string("first launch captured: begin capture: ") + cudaGetErrorName(begin));
  check(s.ok(), "first launch captured: launch: " + s.message());
  check(end == cudaSuccess, std::string("first launch captured: end capture: ") + cudaGetErrorName(end));
  const bool ready = begin == cudaSuccess && s.ok() && end == cudaSuccess &&
                     cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  if (ready) {
    cudaGraphLaunch(exec, stream);
    check(cudaStreamSynchronize(stream) == cudaSuccess, "first launch captured: replay");
    l.y = dy2.get();
    check(launch_expert_gate_up(l, nullptr).ok(), "first launch captured: direct launch");
    check(cudaDeviceSynchronize() == cudaSuccess, "first launch captured: direct kernel");
    const std::vector<float> a = dy.host(), b = dy2.host();
    check(std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0,
          "first launch captured: replay bit-identical to a direct launch");
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  cudaGetLastError();  // a failed capture leaves its error here; the checks above reported it
}

// The same launch twice directly and once replayed from a graph: bit-identical outputs.
void test_repeat(const Fixture& f, const ExpertMatvecOptions& o, const std::string& label) {
  DeviceVec<float> dx(f.x), dw(f.weights), dh(f.h), dy(kUsed * f.ffn), dz(f.dim);
  DeviceVec<int32_t> dids(f.ids);
  ExpertGateUpLaunch gu = gate_up_launch(f.dg->m, f.du->m, dx.get(), dids.get(), dw.get(), 10.0f, dy.get());
  ExpertDownLaunch dn;
  dn.down = &f.dd->m;
  dn.x = dh.get();
  dn.ids = dids.get();
  dn.n_used = kUsed;
  dn.accumulate = false;
  dn.y = dz.get();
  std::vector<std::vector<float>> ys, zs;
  for (int i = 0; i < 2; ++i) {
    check(launch_expert_gate_up(gu, nullptr, o).ok() && launch_expert_down(dn, nullptr, o).ok(),
          label + "repeat launches");
    check(cudaDeviceSynchronize() == cudaSuccess, label + "repeat kernels");
    ys.push_back(dy.host());
    zs.push_back(dz.host());
  }
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaMemset(dy.get(), 0xFF, sizeof(float) * kUsed * f.ffn);
  cudaMemset(dz.get(), 0xFF, sizeof(float) * f.dim);
  bool captured = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess;
  captured = captured && launch_expert_gate_up(gu, stream, o).ok() && launch_expert_down(dn, stream, o).ok();
  captured = cudaStreamEndCapture(stream, &graph) == cudaSuccess && captured;
  captured = captured && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  check(captured, label + "gate+up and down captured in a CUDA graph");
  if (captured) {
    cudaGraphLaunch(exec, stream);
    check(cudaStreamSynchronize(stream) == cudaSuccess, label + "graph replay");
    ys.push_back(dy.host());
    zs.push_back(dz.host());
  }
  for (size_t i = 1; i < ys.size(); ++i) {
    const bool same_y = std::memcmp(ys[0].data(), ys[i].data(), sizeof(float) * ys[0].size()) == 0;
    const bool same_z = std::memcmp(zs[0].data(), zs[i].data(), sizeof(float) * zs[0].size()) == 0;
    check(same_y, label + "gate+up run " + std::to_string(i) + (i == 2 ? " (graph)" : "") + " bit-identical to run 0");
    check(same_z, label + "down run " + std::to_string(i) + (i == 2 ? " (graph)" : "") + " bit-identical to run 0");
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Microseconds per launch: a chain of 40 launches `launch(k % 8)` (eight disjoint expert
// sets, so weights come from device memory, not L2) captured in one graph (PDL edges where
// PDL is on), replayed until 200 launches have run (after one warm-up replay). Negative when
// anything failed.
template <typename F>
double time_graph(F launch) {
  constexpr int kPerGraph = 40, kReplays = 5;
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess;
  for (int k = 0; k < kPerGraph && ok; ++k) ok = launch(k % 8, stream).ok();
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
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  return ok ? ms * 1e3 / (kPerGraph * kReplays) : -1.0;
}

bool same_options(const ExpertMatvecOptions& a, const ExpertMatvecOptions& b) {
  return a.tensor_cores == b.tensor_cores && a.staged == b.staged && a.tc_lane_tables == b.tc_lane_tables &&
         a.prefetch == b.prefetch && a.blocks_per_sm == b.blocks_per_sm &&
         a.tc_blocks_per_warp == b.tc_blocks_per_warp && a.staged_stages == b.staged_stages &&
         a.staged_warps == b.staged_warps && a.staged_tiles == b.staged_tiles &&
         a.staged_blocks_ahead == b.staged_blocks_ahead &&
         (a.tensor_cores || (a.rows_per_batch == b.rows_per_batch && a.lane_tables == b.lane_tables));
}

// The fastest variant of one kernel, the default's time and the two kernels compared (the
// tensor-core kernel as the decode ran it before the staged kernels, and the staged
// kernel's default), for the summary lines.
struct Fastest {
  double us = -1, default_us = -1, current_us = -1, staged_us = -1;
  std::string name;
  ExpertMatvecOptions current;  // the tensor-core kernel as routed_experts ran it
  void add(const ExpertMatvecOptions& o, double t) {
    if (t >= 0 && (us < 0 || t < us)) {
      us = t;
      name = options_name(o);
    }
    if (same_options(o, ExpertMatvecOptions{})) default_us = t;
    if (same_options(o, current)) current_us = t;
    ExpertMatvecOptions staged;
    staged.tensor_cores = true;
    staged.staged = true;
    if (same_options(o, staged)) staged_us = t;
  }
  void print(const char* kernel, double bytes, double bandwidth) const {
    const auto rate = [&](double t) { return t > 0 ? bytes / (t * 1e-6) / 1e9 : 0.0; };
    std::printf("bench expert %s summary: default %.2f us, fastest %.2f us (%s); staged %.2f us (%.0f GB/s, %.0f%%) "
                "against the tensor-core kernel %.2f us (%.0f GB/s, %.0f%%): %.2fx\n",
                kernel, default_us, us, name.c_str(), staged_us, rate(staged_us),
                100.0 * rate(staged_us) * 1e9 / bandwidth, current_us, rate(current_us),
                100.0 * rate(current_us) * 1e9 / bandwidth, staged_us > 0 ? current_us / staged_us : 0.0);
  }
};

void bench_line(const char* kernel, const std::string& what, double bytes, double us, double bandwidth,
                double matvec_us) {
  if (us < 0) {
    std::printf("bench expert %-8s %-72s failed\n", kernel, what.c_str());
    return;
  }
  const double gbs = bytes / (us * 1e-6) / 1e9;
  std::printf("bench expert %-8s %-72s %7.2f MB  %7.2f us  %7.1f GB/s  (%.0f%% of read bandwidth)  "
              "launch_matvec %7.2f us (%.0f%%)\n",
              kernel, what.c_str(), bytes / 1e6, us, gbs, 100.0 * gbs * 1e9 / bandwidth, matvec_us,
              100.0 * bytes / (matvec_us * 1e-6) / bandwidth);
}

// Full 256-expert stacks generated on the GPU; 8 disjoint sets of 6 experts per graph.
void bench(double bandwidth) {
  constexpr int kPool = 256, kSets = 8;
  auto g = random_matrix(GgmlType::IQ2_XXS, kDim, kFfn, kPool, 11);
  auto u = random_matrix(GgmlType::IQ2_XXS, kDim, kFfn, kPool, 12);
  auto d = random_matrix(GgmlType::Q2_K, kFfn, kDim, kPool, 13);
  if (!g.ok() || !u.ok() || !d.ok()) {
    std::printf("bench expert: could not allocate the 256-expert stacks\n");
    return;
  }
  std::mt19937 rng(21);
  DeviceVec<int32_t> dids(distinct_ids(kUsed * kSets, kPool, rng));
  DeviceVec<float> dx(random_floats(kDim, rng, -3.0f, 3.0f)), dw(random_floats(kUsed, rng, 0.1f, 1.0f));
  DeviceVec<float> dh(random_floats(kUsed * kFfn, rng, -2.0f, 2.0f)), dy(kUsed * kFfn), dz(kDim);
  const auto per_matrix = [](const DeviceMatrix& m) {
    return static_cast<double>(m.data_bytes() + m.scale_bytes()) / static_cast<double>(m.count);
  };
  const double gu_bytes = kUsed * (per_matrix((*g)->m) + per_matrix((*u)->m));
  const double dn_bytes = kUsed * per_matrix((*d)->m);
  for (float limit : {INFINITY, 10.0f}) {
    const double mv_us = time_graph([&](int k, cudaStream_t s) {
      MatvecLaunch mv;
      mv.w = &(*g)->m;
      mv.w_up = &(*u)->m;
      mv.x = dx.get();
      mv.y = dy.get();
      mv.y_slot_stride = kFfn;
      mv.n_slots = kUsed;
      mv.slot_matrix = dids.get() + k * kUsed;
      mv.slot_weight = dw.get();
      mv.swiglu_limit = limit;
      mv.lanes_per_row = 8;
      return launch_matvec(mv, s);
    });
    Fastest fastest;
    fastest.current = tc_reference_options();
    for (const ExpertMatvecOptions& o : gate_up_options()) {
      const double us = time_graph([&](int k, cudaStream_t s) {
        ExpertGateUpLaunch l =
            gate_up_launch((*g)->m, (*u)->m, dx.get(), dids.get() + k * kUsed, dw.get(), limit, dy.get());
        return launch_expert_gate_up(l, s, o);
      });
      bench_line("gate+up", "limit " + std::to_string(limit) + " " + options_name(o), gu_bytes, us, bandwidth, mv_us);
      fastest.add(o, us);
    }
    fastest.print(std::isfinite(limit) ? "gate+up (limit 10)" : "gate+up (no limit)", gu_bytes, bandwidth);
  }
  const double mv_us = time_graph([&](int k, cudaStream_t s) {
    MatvecLaunch mv;
    mv.w = &(*d)->m;
    mv.x = dh.get();
    mv.x_slot_stride = kFfn;
    mv.y = dz.get();
    mv.n_slots = kUsed;
    mv.slot_matrix = dids.get() + k * kUsed;
    mv.sum_slots = true;
    mv.accumulate = true;
    mv.lanes_per_row = 16;
    return launch_matvec(mv, s);
  });
  Fastest fastest;
  fastest.current = tc_reference_options();
  fastest.current.prefetch = false;
  for (const ExpertMatvecOptions& o : down_options()) {
    const double us = time_graph([&](int k, cudaStream_t s) {
      ExpertDownLaunch l;
      l.down = &(*d)->m;
      l.x = dh.get();
      l.ids = dids.get() + k * kUsed;
      l.n_used = kUsed;
      l.y = dz.get();
      return launch_expert_down(l, s, o);
    });
    bench_line("down", "y += " + options_name(o), dn_bytes, us, bandwidth, mv_us);
    fastest.add(o, us);
  }
  fastest.print("down", dn_bytes, bandwidth);
  // gate+up then down, as the decode runs them (limit 10, down adding): the pair's time per
  // token for the tensor-core kernels and the staged ones.
  for (bool staged : {false, true}) {
    ExpertMatvecOptions o = tc_reference_options();
    o.staged = staged;
    ExpertMatvecOptions od = o;
    od.prefetch = false;
    const double us = time_graph([&](int k, cudaStream_t s) {
      ExpertGateUpLaunch l =
          gate_up_launch((*g)->m, (*u)->m, dx.get(), dids.get() + k * kUsed, dw.get(), 10.0f, dy.get());
      DS4_RETURN_IF_ERROR(launch_expert_gate_up(l, s, o));
      ExpertDownLaunch dl;
      dl.down = &(*d)->m;
      dl.x = dy.get();
      dl.ids = dids.get() + k * kUsed;
      dl.n_used = kUsed;
      dl.y = dz.get();
      return launch_expert_down(dl, s, od);
    });
    const double bytes = gu_bytes + dn_bytes;
    std::printf("bench expert gate+up then down (%s): %.2f us per pair, %.1f MB, %.0f GB/s (%.0f%% of read "
                "bandwidth)\n",
                staged ? "staged" : "tensor cores", us, bytes / 1e6, us > 0 ? bytes / (us * 1e-6) / 1e9 : 0.0,
                us > 0 ? 100.0 * bytes / (us * 1e-6) / bandwidth : 0.0);
  }
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  std::mt19937 rng(20261129);
  {
    Fixture f;
    if (make_fixture(kDim, kFfn, 16, rng, &f)) {
      std::printf("experts used:");
      for (int32_t id : f.ids) std::printf(" %d", id);
      std::printf(" of 16\n");
      test_first_launch_captured(f);  // first: no expert launch may run before it
      test_gate_up(f, gate_up_options(), "");
      test_down(f, down_options(), "", rng);
      test_staged_bits(f, "");
      test_router_fold(f, 16, ExpertMatvecOptions{}, true, "");
      test_refusals(f);
      test_repeat(f, ExpertMatvecOptions{}, "default: ");
      ExpertMatvecOptions f32;
      f32.tensor_cores = false;
      test_repeat(f, f32, "f32: ");
      ExpertMatvecOptions staged;
      staged.staged = true;
      test_repeat(f, staged, "staged: ");
    }
  }
  {
    Fixture f;
    if (make_fixture(kTinyDim, kTinyFfn, 8, rng, &f)) {
      std::printf("tiny (%lld x %lld, 8 experts) experts used:", static_cast<long long>(kTinyFfn),
                  static_cast<long long>(kTinyDim));
      for (int32_t id : f.ids) std::printf(" %d", id);
      std::printf("\n");
      test_tiny_support(f);
      test_gate_up(f, all_options(false, 0, true), "tiny ");
      test_down(f, all_options(false, 0, false), "tiny ", rng);
      test_staged_bits(f, "tiny ");
      test_repeat(f, ExpertMatvecOptions{}, "tiny default: ");
      ExpertMatvecOptions staged;
      staged.staged = true;
      test_repeat(f, staged, "tiny staged: ");
    }
  }
  {
    // 256 experts of the tiny shape: the real router width, inside the kernel with 8 warps
    // per block (a thread per expert) and through the router kernel with the default 2.
    Fixture f;
    if (make_fixture(kTinyDim, kTinyFfn, 256, rng, &f)) {
      ExpertMatvecOptions eight;
      eight.staged_warps = 8;
      test_router_fold(f, 256, eight, true, "tiny ");
      test_router_fold(f, 256, ExpertMatvecOptions{}, false, "tiny ");
    }
  }
  auto bw = measure_read_bandwidth(size_t{4} << 30, 5);
  if (bw.ok()) {
    std::printf("bench read bandwidth (sum over 4 GiB): %.1f GB/s\n", *bw / 1e9);
    bench(*bw);
  } else {
    std::printf("bench read bandwidth: %s\n", bw.status().message().c_str());
  }
  return finish("expert_matvec_test");
}
