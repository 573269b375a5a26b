// The prefill's dense Q8_0 products on integer tensor cores (cuda/q8_matmul.h) against a
// CPU reference (format/quant.h dequantization, dot products and magnitudes in double)
// within the header's precision bound, and against launch_matmul's kExact kernels
// (cuda/matmul.h) on the same inputs (the largest difference printed relative to the rms
// of the output row). Shapes: tiny ones (256 and 512 columns, 1-3 tokens and a few more,
// row_begin / n_rows subsets, a second stacked matrix, accumulate, paired SwiGLU with and
// without a clamp) and the prefill's real ones with 2048 tokens (q_a 1024 x 4096, q_b
// 32768 x 1024, kv 512 x 4096, out_a 8 groups of 1024 x 4096 over a strided x, out_b
// 4096 x 8192, the shared expert's gate+up 2 x 2048 x 4096 paired and down 4096 x 2048).
// Outputs are NaN-filled before each launch (an unwritten element fails) and the columns
// past n_rows must stay untouched; repeats and every tuning variant must agree with the
// default bit for bit; a non-finite x block must give NaN in every output of its token;
// bad launches are refused with a message. Then benchmarks at the real shapes: us and
// TOPS (2 rows cols tokens per product, digit split included) of each variant against
// kExact.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/device_model.h"
#include "cuda/matmul.h"
#include "cuda/q8_matmul.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

constexpr double kUnit = 1.0 / 16777216.0;  // 2^-24

// The scale s_b of 256 values of x (header): 2^(E - 30) with four digits, 2^(E - 22) with
// three, max |x| < 2^E, E >= -96.
double block_scale(const float* x, int digits) {
  float m = 0.0f;
  for (int i = 0; i < 256; ++i) m = std::max(m, std::fabs(x[i]));
  int e = 0;
  std::frexp(m, &e);
  e = std::max(e, -96);
  return std::ldexp(1.0, e - (digits == 3 ? 22 : 30));
}

// A stacked Q8_0 matrix on the device with its file-layout bytes on the host.
struct Matrix {
  int64_t cols = 0, rows = 0, count = 0;
  std::vector<uint8_t> bytes;
  std::unique_ptr<OwnedDeviceMatrix> dev;
  const uint8_t* row(int64_t matrix, int64_t r) const {
    return bytes.data() + (matrix * rows + r) * ggml_row_bytes(GgmlType::Q8_0, cols);
  }
};

std::unique_ptr<Matrix> make_matrix(int64_t cols, int64_t rows, int64_t count, std::mt19937& rng,
                                    const std::string& name) {
  auto m = std::make_unique<Matrix>();
  m->cols = cols;
  m->rows = rows;
  m->count = count;
  m->bytes = random_blocks(GgmlType::Q8_0, rows * count, cols, rng);
  auto dm = upload_matrix(GgmlType::Q8_0, cols, rows, count, m->bytes.data());
  check(dm.ok(), name + ": upload: " + (dm.ok() ? std::string() : dm.status().message()));
  if (!dm.ok()) return nullptr;
  m->dev = std::move(*dm);
  return m;
}

// Activations with some spread: each 256-column block scaled by 2^k (k in [-4, 3]) and a
// few values 30 times larger (the outliers of real activations).
std::vector<float> make_x(int64_t rows, int64_t stride, std::mt19937& rng) {
  std::vector<float> x = random_floats(static_cast<size_t>(rows * stride), rng);
  std::uniform_int_distribution<int> k(-4, 3);
  std::uniform_int_distribution<int> pick(0, 255);
  for (int64_t b = 0; b < rows * stride / 256; ++b) {
    const float s = std::ldexp(1.0f, k(rng));
    for (int i = 0; i < 256; ++i) x[b * 256 + i] *= s;
    x[b * 256 + pick(rng)] *= 30.0f;
  }
  return x;
}

// The CPU value of one output and its bound (header): the dot product in double and
// sum_b s_b sum |w_e| + (n + 24) u sum |w_e x_e|.
struct Ref {
  double v = 0, bound = 0;
};

Ref reference(const Matrix& m, int64_t matrix, int64_t row, const float* x, std::vector<float>& w, int digits) {
  w.resize(m.cols);
  dequantize_row(GgmlType::Q8_0, m.row(matrix, row), w.data(), m.cols);
  Ref r;
  double abs_wx = 0;
  for (int64_t b = 0; b < m.cols / 256; ++b) {
    const double s = block_scale(x + b * 256, digits);
    double abs_w = 0;
    for (int64_t e = b * 256; e < b * 256 + 256; ++e) {
      const double p = static_cast<double>(w[e]) * x[e];
      r.v += p;
      abs_wx += std::fabs(p);
      abs_w += std::fabs(static_cast<double>(w[e]));
    }
    r.bound += s * abs_w;
  }
  r.bound += (static_cast<double>(m.cols / 128) + 24) * kUnit * abs_wx;
  return r;
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

// The SwiGLU of the two references and its bound (the bounds of g and u carried through
// silu' <= 1.1 and the clamp, which only shrinks differences).
Ref swiglu_ref(const Ref& g, const Ref& u, double limit) {
  const double gc = std::min(g.v, limit);
  const double uc = std::max(-limit, std::min(u.v, limit));
  Ref r;
  r.v = silu(gc) * uc;
  r.bound = 1.1 * g.bound * (std::fabs(uc) + u.bound) + std::fabs(silu(gc)) * u.bound + 1e-30;
  r.bound = r.bound * 1.01 + 16 * kUnit * std::fabs(r.v);  // the f32 SwiGLU itself (expf, division)
  return r;
}

// One dense launch: a weight (and up) matrix, rows, tokens, strides.
struct Case {
  std::string name;
  const Matrix* w = nullptr;
  const Matrix* up = nullptr;
  int matrix = 0;
  int64_t row_begin = 0, n_rows = 0;
  int n_tokens = 0;
  int64_t x_stride = 0;        // floats; the activations of token t at x + t * x_stride + x_offset
  int64_t x_offset = 0;
  float limit = INFINITY;
  bool accumulate = false;
  std::vector<int> check_tokens;  // tokens compared with the CPU (empty: all)
};

MatmulLaunch launch_of(const Case& c, const float* dx, float* dy, int64_t y_stride) {
  MatmulLaunch l;
  l.w = &c.w->dev->m;
  l.w_up = c.up ? &c.up->dev->m : nullptr;
  l.matrix = c.matrix;
  l.row_begin = c.row_begin;
  l.n_rows = c.n_rows;
  l.x = dx + c.x_offset;
  l.x_stride = c.x_stride;
  l.y = dy;
  l.y_stride = y_stride;
  l.n_tokens = c.n_tokens;
  l.swiglu_limit = c.limit;
  l.accumulate = c.accumulate;
  return l;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs case c on the new kernel with `digits` activation digits (every variant, twice for
// the default) and kExact, checks them as the file's comment says.
void run_case(const Case& c, std::mt19937& rng, int digits = 4) {
  Q8MatmulOptions options;
  options.digits = digits;
  const std::string name = c.name + (digits == 3 ? " [3 digits]" : "");
  const int64_t y_stride = c.n_rows + 3;  // three guard columns per token
  const std::vector<float> x = make_x(c.n_tokens, c.x_stride, rng);
  DeviceVec<float> dx(x);
  DeviceVec<uint8_t> ws(q8_matmul_workspace_bytes(c.w->cols, c.n_tokens));
  std::vector<float> y0(static_cast<size_t>(c.n_tokens) * y_stride, NAN);
  std::vector<float> base;
  if (c.accumulate) {
    base = random_floats(y0.size(), rng);
    y0 = base;
  }
  DeviceVec<float> dy(y0);
  const MatmulLaunch l = launch_of(c, dx.get(), dy.get(), y_stride);
  Status s = launch_q8_matmul(l, ws.get(), nullptr, options);
  check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, name + ": launch: " + s.message());
  if (!s.ok()) return;
  const std::vector<float> y = dy.host();

  // Guard columns untouched; every output written and finite.
  int unwritten = 0, guard = 0;
  for (int t = 0; t < c.n_tokens; ++t) {
    for (int64_t r = 0; r < y_stride; ++r) {
      const size_t i = static_cast<size_t>(t) * y_stride + r;
      const bool same = std::memcmp(&y[i], &y0[i], sizeof(float)) == 0;
      if (r >= c.n_rows && !same) ++guard;
      if (r < c.n_rows && !std::isfinite(y[i])) {
        if (unwritten < 3) std::printf("  %s: token %d row %lld not written or not finite: %g\n", name.c_str(), t,
                                       static_cast<long long>(r), y[i]);
        ++unwritten;
      }
    }
  }
  check(unwritten == 0, name + ": " + std::to_string(unwritten) + " outputs not written or not finite");
  check(guard == 0, name + ": " + std::to_string(guard) + " guard columns past n_rows changed");

  // Against the CPU within the bound.
  std::vector<int> tokens = c.check_tokens;
  if (tokens.empty()) {
    for (int t = 0; t < c.n_tokens; ++t) tokens.push_back(t);
  }
  std::vector<float> wbuf, ubuf;
  int bad = 0;
  double worst = 0;  // largest |d| / bound
  for (int t : tokens) {
    const float* xt = x.data() + static_cast<int64_t>(t) * c.x_stride + c.x_offset;
    for (int64_t r = 0; r < c.n_rows; ++r) {
      Ref e = reference(*c.w, c.matrix, c.row_begin + r, xt, wbuf, digits);
      if (c.up) e = swiglu_ref(e, reference(*c.up, c.matrix, c.row_begin + r, xt, ubuf, digits), c.limit);
      const size_t i = static_cast<size_t>(t) * y_stride + r;
      const double got = c.accumulate ? static_cast<double>(y[i]) - base[i] : y[i];
      const double bound = e.bound + (c.accumulate ? 2 * kUnit * std::fabs(y[i]) : 0.0);
      const double d = std::fabs(got - e.v);
      worst = std::max(worst, d / bound);
      if (!(d <= bound)) {
        if (bad < 5) {
          std::printf("  %s: token %d row %lld: got %.9g expected %.9g (|d| %.3g > bound %.3g)\n", name.c_str(), t,
                      static_cast<long long>(r), got, e.v, d, bound);
        }
        ++bad;
      }
    }
  }
  check(bad == 0, name + ": " + std::to_string(bad) + " outputs outside the bound of the CPU reference");

  // Repeat and variants: bit for bit.
  for (int v = -1; v < q8_matmul_variant_count(); ++v) {
    if (v >= 0 && !q8_matmul_variant_usable(v, c.up != nullptr)) continue;
    DeviceVec<float> dy2(y0);
    const MatmulLaunch l2 = launch_of(c, dx.get(), dy2.get(), y_stride);
    Q8MatmulOptions o = options;
    o.variant = v;
    Status s2 = launch_q8_matmul(l2, ws.get(), nullptr, o);
    check(s2.ok() && cudaDeviceSynchronize() == cudaSuccess, name + ": variant launch: " + s2.message());
    const std::vector<float> y2 = dy2.host();
    const std::string what = v < 0 ? std::string("repeat") : "variant " + q8_matmul_variant_name(v);
    size_t first = 0;
    while (first < y.size() && std::memcmp(&y[first], &y2[first], sizeof(float)) == 0) ++first;
    check(same_bits(y, y2), name + ": " + what + " differs from the first launch" +
                                (first < y.size() ? " at " + std::to_string(first) + ": " + std::to_string(y2[first]) +
                                                        " vs " + std::to_string(y[first])
                                                  : std::string()));
  }

  // Against kExact (the matmul kernels the prefill used before): the largest difference
  // relative to the rms of the token's output row.
  DeviceVec<float> dye(y0);
  MatmulLaunch le = launch_of(c, dx.get(), dye.get(), y_stride);
  le.precision = MatmulPrecision::kExact;
  if (!matmul_fits(le)) le.token_tile = 32;
  Status se = launch_matmul(le, nullptr);
  check(se.ok() && cudaDeviceSynchronize() == cudaSuccess, name + ": kExact launch: " + se.message());
  if (!se.ok()) return;
  const std::vector<float> ye = dye.host();
  double max_rel = 0;
  int worst_t = 0;
  int64_t worst_r = 0;
  for (int t = 0; t < c.n_tokens; ++t) {
    double ss = 0;
    for (int64_t r = 0; r < c.n_rows; ++r) {
      const size_t i = static_cast<size_t>(t) * y_stride + r;
      const double v = c.accumulate ? ye[i] - base[i] : ye[i];
      ss += v * v;
    }
    const double rms = std::sqrt(ss / std::max<int64_t>(c.n_rows, 1)) + 1e-30;
    for (int64_t r = 0; r < c.n_rows; ++r) {
      const size_t i = static_cast<size_t>(t) * y_stride + r;
      const double rel = std::fabs(static_cast<double>(y[i]) - ye[i]) / rms;
      if (rel > max_rel) {
        max_rel = rel;
        worst_t = t;
        worst_r = r;
      }
    }
  }
  const size_t wi = static_cast<size_t>(worst_t) * y_stride + worst_r;
  std::printf("  %-52s CPU: worst |d|/bound %.3g over %zu tokens; kExact: max |d| / row rms %.3g (token %d row %lld: "
              "%.9g vs %.9g)\n",
              name.c_str(), worst, tokens.size(), max_rel, worst_t, static_cast<long long>(worst_r), y[wi], ye[wi]);
  const double limit = digits == 3 ? 1e-3 : 1e-4;
  check(max_rel < limit, name + ": differs from kExact by " + std::to_string(max_rel) + " of a row's rms");
}

// A non-finite value in one 256-column block of token 1 makes all of token 1's outputs
// NaN and leaves the other tokens finite (unpaired).
void check_non_finite(const Matrix& m, std::mt19937& rng) {
  const int n = 3;
  std::vector<float> x = make_x(n, m.cols, rng);
  x[m.cols + 7] = INFINITY;
  DeviceVec<float> dx(x);
  DeviceVec<float> dy(static_cast<size_t>(n) * m.rows);
  DeviceVec<uint8_t> ws(q8_matmul_workspace_bytes(m.cols, n));
  MatmulLaunch l;
  l.w = &m.dev->m;
  l.x = dx.get();
  l.x_stride = m.cols;
  l.y = dy.get();
  l.y_stride = m.rows;
  l.n_tokens = n;
  Status s = launch_q8_matmul(l, ws.get(), nullptr);
  check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, "non-finite x: launch: " + s.message());
  const std::vector<float> y = dy.host();
  int wrong = 0;
  for (int t = 0; t < n; ++t) {
    for (int64_t r = 0; r < m.rows; ++r) {
      const float v = y[t * m.rows + r];
      if ((t == 1) != std::isnan(v)) ++wrong;
    }
  }
  check(wrong == 0, "non-finite x: " + std::to_string(wrong) + " outputs where token 1 is not NaN or another is");
}

// Launches the kernel cannot take are refused with a message naming the cause.
void check_refusals(const Matrix& m256, std::mt19937& rng) {
  auto odd = make_matrix(320, 64, 1, rng, "320 columns");
  auto f16 = upload_matrix(GgmlType::F16, 256, 64, 1, random_blocks(GgmlType::F16, 64, 256, rng).data());
  DeviceVec<float> dx(4 * 320), dy(4 * 320);
  DeviceVec<uint8_t> ws(q8_matmul_workspace_bytes(320, 4) + 4096);
  const auto refused = [&](const MatmulLaunch& l, void* w, const std::string& what) {
    Status s = launch_q8_matmul(l, w, nullptr);
    check(!s.ok() && !s.message().empty(), what + ": expected a refusal");
    if (!s.ok()) std::printf("  refused (%s): %s\n", what.c_str(), s.message().c_str());
  };
  MatmulLaunch l;
  l.x = dx.get();
  l.y = dy.get();
  l.n_tokens = 4;
  if (odd) {
    l.w = &odd->dev->m;
    l.x_stride = 320;
    l.y_stride = 64;
    refused(l, ws.get(), "320 columns");
  }
  if (f16.ok()) {
    l.w = &(*f16)->m;
    l.x_stride = 256;
    refused(l, ws.get(), "F16 weights");
  }
  l.w = &m256.dev->m;
  l.x_stride = 256;
  l.y_stride = m256.rows;
  refused(l, nullptr, "no workspace");
  MatmulLaunch grouped = l;
  DeviceVec<int32_t> offsets(2);
  grouped.group_offsets = offsets.get();
  grouped.n_groups = 1;
  refused(grouped, ws.get(), "grouped mode");
  MatmulLaunch misaligned = l;
  misaligned.x = dx.get() + 1;
  refused(misaligned, ws.get(), "misaligned x");
  MatmulLaunch rows = l;
  rows.row_begin = m256.rows - 8;
  rows.n_rows = 16;
  refused(rows, ws.get(), "rows past the matrix");
}

// us and TOPS of every usable variant and of kExact (the prefill's settings: two blocks
// per multiprocessor where they fit).
void bench(const Case& c, std::mt19937& rng) {
  const int64_t y_stride = c.n_rows;
  const std::vector<float> x = make_x(c.n_tokens, c.x_stride, rng);
  DeviceVec<float> dx(x), dy(static_cast<size_t>(c.n_tokens) * y_stride);
  DeviceVec<uint8_t> ws(q8_matmul_workspace_bytes(c.w->cols, c.n_tokens));
  const MatmulLaunch l = launch_of(c, dx.get(), dy.get(), y_stride);
  const double ops = 2.0 * c.n_rows * c.w->cols * c.n_tokens * (c.up ? 2 : 1);
  MatmulLaunch le = l;
  le.precision = MatmulPrecision::kExact;
  le.exact_two_blocks = true;
  if (!matmul_fits(le)) le.exact_two_blocks = false;
  if (!matmul_fits(le)) le.token_tile = 32;
  Status se;
  const double us_exact = time_us([&] { se = launch_matmul(le, nullptr); }, 10);
  check(se.ok() && cudaDeviceSynchronize() == cudaSuccess, "bench " + c.name + " kExact: " + se.message());
  std::printf("bench %-28s kExact %9.1f us %6.1f TOPS", c.name.c_str(), us_exact, ops / us_exact * 1e-6);
  for (int v = -1; v < q8_matmul_variant_count(); ++v) {
    if (v >= 0 && !q8_matmul_variant_usable(v, c.up != nullptr)) continue;
    Status s;
    Q8MatmulOptions o;
    o.variant = v;
    const double us = time_us([&] { s = launch_q8_matmul(l, ws.get(), nullptr, o); }, 10);
    check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, "bench " + c.name + ": " + s.message());
    std::printf(" | %s %9.1f us %6.1f TOPS %.2fx", v < 0 ? "int8 default" : q8_matmul_variant_name(v).c_str(), us,
                ops / us * 1e-6, us_exact / us);
  }
  {
    Q8MatmulOptions three;
    three.digits = 3;
    Status s3;
    const double us = time_us([&] { s3 = launch_q8_matmul(l, ws.get(), nullptr, three); }, 10);
    check(s3.ok() && cudaDeviceSynchronize() == cudaSuccess, "bench " + c.name + " 3 digits: " + s3.message());
    std::printf(" | 3 digits %9.1f us %6.1f TOPS %.2fx", us, ops / us * 1e-6, us_exact / us);
  }
  // The digit split alone (a launch of one output row costs little more).
  MatmulLaunch one = l;
  one.n_rows = 1;
  one.w_up = nullptr;
  Status s1;
  const double us_split = time_us([&] { s1 = launch_q8_matmul(one, ws.get(), nullptr); }, 10);
  std::printf(" | split + 1 row %.1f us\n", us_split);
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  Status init = q8_matmul_init();
  check(init.ok(), "q8_matmul_init: " + init.message());
  Status minit = matmul_init();
  check(minit.ok(), "matmul_init: " + minit.message());
  if (!init.ok() || !minit.ok()) return finish("q8_matmul_test");
  for (int v = 0; v < q8_matmul_variant_count(); ++v) {
    std::printf("variant %d: %s (unpaired %s, paired %s on this device)\n", v, q8_matmul_variant_name(v).c_str(),
                q8_matmul_variant_usable(v, false) ? "usable" : "too large",
                q8_matmul_variant_usable(v, true) ? "usable" : "too large");
  }
  std::mt19937 rng(20261129);

  // Tiny shapes.
  auto t256 = make_matrix(256, 200, 2, rng, "tiny 256");
  auto u256 = make_matrix(256, 200, 2, rng, "tiny up 256");
  auto t512 = make_matrix(512, 130, 1, rng, "tiny 512");
  auto u512 = make_matrix(512, 130, 1, rng, "tiny up 512");
  if (!t256 || !u256 || !t512 || !u512) return finish("q8_matmul_test");
  std::vector<Case> tiny;
  for (int n : {1, 2, 3, 37, 70}) {
    Case c;
    c.name = "256 cols, " + std::to_string(n) + " tokens";
    c.w = t256.get();
    c.n_rows = 200;
    c.n_tokens = n;
    c.x_stride = 256;
    tiny.push_back(c);
  }
  {
    Case c;
    c.name = "256 cols, matrix 1, rows [72, 142)";
    c.w = t256.get();
    c.matrix = 1;
    c.row_begin = 72;
    c.n_rows = 70;
    c.n_tokens = 3;
    c.x_stride = 260;  // padded rows
    tiny.push_back(c);
    c.name = "256 cols, rows [8, 24), accumulate";
    c.matrix = 0;
    c.row_begin = 8;
    c.n_rows = 16;
    c.n_tokens = 5;
    c.accumulate = true;
    tiny.push_back(c);
    c.name = "512 cols, 2 tokens, x offset";
    c.w = t512.get();
    c.row_begin = 0;
    c.n_rows = 130;
    c.n_tokens = 2;
    c.x_stride = 1024;
    c.x_offset = 512;
    c.accumulate = false;
    tiny.push_back(c);
    c.name = "512 cols, 67 tokens, accumulate";
    c.n_tokens = 67;
    c.x_stride = 512;
    c.x_offset = 0;
    c.accumulate = true;
    tiny.push_back(c);
    for (float limit : {INFINITY, 0.75f}) {
      for (int n : {1, 3, 66}) {
        Case p;
        p.name = "paired 256 cols, " + std::to_string(n) + " tokens" + (std::isinf(limit) ? "" : ", limit 0.75");
        p.w = t256.get();
        p.up = u256.get();
        p.matrix = 1;
        p.n_rows = 200;
        p.n_tokens = n;
        p.x_stride = 256;
        p.limit = limit;
        tiny.push_back(p);
      }
    }
    Case p;
    p.name = "paired 512 cols, rows [2, 101), 4 tokens";
    p.w = t512.get();
    p.up = u512.get();
    p.row_begin = 2;
    p.n_rows = 99;
    p.n_tokens = 4;
    p.x_stride = 512;
    tiny.push_back(p);
    p.name = "paired 512 cols, accumulate";
    p.accumulate = true;
    tiny.push_back(p);
  }
  for (const Case& c : tiny) run_case(c, rng);
  for (const Case& c : tiny) run_case(c, rng, 3);
  check_non_finite(*t512, rng);
  check_refusals(*t256, rng);

  // The real shapes, 2048 tokens (CPU check on three tokens, kExact on all).
  const int T = 2048;
  const std::vector<int> sample = {0, 1029, T - 1};
  auto q_a = make_matrix(4096, 1024, 1, rng, "q_a");
  auto q_b = make_matrix(1024, 32768, 1, rng, "q_b");
  auto kv = make_matrix(4096, 512, 1, rng, "kv");
  auto out_a = make_matrix(4096, 8192, 1, rng, "out_a");
  auto out_b = make_matrix(8192, 4096, 1, rng, "out_b");
  auto gate = make_matrix(4096, 2048, 1, rng, "shared gate");
  auto up = make_matrix(4096, 2048, 1, rng, "shared up");
  auto down = make_matrix(2048, 4096, 1, rng, "shared down");
  if (!q_a || !q_b || !kv || !out_a || !out_b || !gate || !up || !down) return finish("q8_matmul_test");
  std::vector<Case> real;
  const auto add = [&](const std::string& name, const Matrix* w, const Matrix* u = nullptr) {
    Case c;
    c.name = name;
    c.w = w;
    c.up = u;
    c.n_rows = w->rows;
    c.n_tokens = T;
    c.x_stride = w->cols;
    c.check_tokens = sample;
    real.push_back(c);
  };
  add("q_a 1024 x 4096", q_a.get());
  add("q_b 32768 x 1024", q_b.get());
  add("kv 512 x 4096", kv.get());
  add("out_b 4096 x 8192", out_b.get());
  add("shared gate+up 2 x 2048 x 4096", gate.get(), up.get());
  real.back().limit = 10.0f;
  add("shared down 4096 x 2048", down.get());
  for (int g : {0, 7}) {  // out_a: group g's rows over its slice of the heads
    Case c;
    c.name = "out_a group " + std::to_string(g) + " 1024 x 4096";
    c.w = out_a.get();
    c.row_begin = 1024 * g;
    c.n_rows = 1024;
    c.n_tokens = T;
    c.x_stride = 32768;
    c.x_offset = 4096 * g;
    c.check_tokens = sample;
    real.push_back(c);
  }
  for (const Case& c : real) run_case(c, rng);
  for (const Case& c : real) run_case(c, rng, 3);

  for (const Case& c : real) bench(c, rng);
  return finish("q8_matmul_test");
}
