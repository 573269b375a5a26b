// Tensor-core matrix-matrix kernels (cuda/matmul.h) against the CPU reference: rows
// dequantized with format/quant.h, dot products in double, every output element
// compared with |got - ref| <= 2e-6 * sum_k |w_k x_k| + 1e-7 for MatmulPrecision::kExact,
// <= 2e-3 * sum_k |w_k x_k| + 1e-6 for kF16 (f16 operand rounding), and for
// kF16Activations the kExact bound plus the activations' f16 rounding:
// 2^-11 * sum_k |A q_k x_k| + 2^-25 * sum_k |A q_k| (A q_k: the weight without the
// k-quants' minimum, which the kernel applies to the f32 sum of x); each case prints
// its largest error as a fraction of the tolerance and of sum |w x|. Every case runs
// in the three precisions (F32 weights: kF16 only; the integer forms refuse them), and
// again with activations of a large dynamic range (magnitudes 1e3, 1 and 1e-3 mixed);
// the tuning variants (exact_two_blocks, exact_k16, the 32-token tile) are checked on
// a subset, the 32-token tiles also bit for bit against the 64-token ones. Unpaired
// Q2_K cases (dense and grouped, 256 to 1024 columns: one to four super-blocks) cover
// the minimums summed on tensor cores per super-block.
// Covers every weight type, token counts 1/7/64/200 (both token tiles), row counts
// that are not a multiple of the row tile, row sub-ranges of a stacked matrix, strided
// x and y, accumulate, the paired SwiGLU with a limit, and grouped mode (uneven
// groups: empty ones, one with a single assignment, one with more than two tiles;
// gathered x rows and per-row scales), launches repeated bit for bit. Then a benchmark
// of both precisions on the prefill shapes.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/device_limits.h"
#include "cuda/device_model.h"
#include "cuda/matmul.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

std::string tname(GgmlType t) { return std::string(ggml_type_name(t)); }

int g_token_tile = 0;  // MatmulLaunch::token_tile of the correctness launches (0: launcher's choice)
MatmulPrecision g_precision = MatmulPrecision::kExact;  // of the correctness launches
bool g_wide_x = false;  // activations with magnitudes 1e3, 1 and 1e-3 mixed
bool g_two_blocks = false;  // MatmulLaunch::exact_two_blocks of the correctness launches
bool g_k16 = false;         // MatmulLaunch::exact_k16 of the correctness launches
bool g_staged = false;      // correctness launches with MatmulLaunch::split_workspace (staged kernels)
bool g_bench_staged = false;  // benchmarks with MatmulLaunch::split_workspace (the split is timed too)

// Device workspace for the staged kernels' split activations (grown as needed).
void* staged_workspace(size_t bytes) {
  static void* p = nullptr;
  static size_t have = 0;
  if (bytes > have) {
    cudaFree(p);
    p = nullptr;
    have = 0;
    if (cudaMalloc(&p, bytes) != cudaSuccess) return nullptr;
    have = bytes;
  }
  return p;
}

// Whether this device's shared memory holds every staged kernel (about 184 KiB per
// block at most; the H200 allows 227 KiB, the GB10 99 KiB, and DS4_CUDA_MAX_SHARED_PER_BLOCK
// may lower it): where not, the staged checks below only require correct results.
bool staged_device() { return max_shared_per_block() >= 200 * 1024; }

// With g_staged: sets l's split workspace for `pool` x rows and checks that the launch
// runs a staged kernel where one exists (kExact IQ2_XXS and Q8_0, unpaired Q2_K) and
// the device holds it.
void set_staged(MatmulLaunch* l, int64_t pool, const std::string& name) {
  if (!g_staged) return;
  l->split_workspace = staged_workspace(matmul_split_workspace_bytes(l->w->cols, std::max<int64_t>(pool, 1)));
  l->x_pool_rows = pool;
  const bool expected = l->precision == MatmulPrecision::kExact && l->token_tile == 0 && !l->exact_two_blocks &&
                        !l->exact_k16 &&
                        (l->w->type == GgmlType::IQ2_XXS || l->w->type == GgmlType::Q8_0 ||
                         (l->w->type == GgmlType::Q2_K && l->w_up == nullptr));
  if (!staged_device() && !matmul_staged(*l)) return;
  check(matmul_staged(*l) == expected, name + ": matmul_staged() is " + (expected ? "false" : "true") +
                                           " (expected " + (expected ? "true" : "false") + ")");
}

const char* precision_name(MatmulPrecision p) {
  return p == MatmulPrecision::kExact ? "exact" : p == MatmulPrecision::kF16Activations ? "f16act" : "f16";
}

// Random activations; with g_wide_x each value is scaled by 1e3, 1 or 1e-3 at random.
std::vector<float> random_x(size_t n, std::mt19937& rng) {
  std::vector<float> x = random_floats(n, rng);
  if (g_wide_x) {
    std::uniform_int_distribution<int> pick(0, 2);
    const float mags[3] = {1e3f, 1.0f, 1e-3f};
    for (auto& v : x) v *= mags[pick(rng)];
  }
  return x;
}

std::string case_suffix() {
  return std::string(" [") + precision_name(g_precision) + (g_wide_x ? ", wide x" : "") +
         (g_two_blocks ? ", two blocks" : "") + (g_k16 ? ", k16" : "") + (g_staged ? ", staged" : "") + "]";
}

// A random stacked matrix with its CPU dequantization (count * rows rows of cols floats)
// and, for the k-quants (w = A q - m), the dequantization without the minimums (A q),
// which bounds the error of rounding the activations that multiply the integers.
struct TestMatrix {
  GgmlType type;
  int64_t cols, rows, count;
  std::vector<float> f;
  std::vector<float> fq;  // A q (Q2_K, Q4_K); empty: same as f
  std::unique_ptr<OwnedDeviceMatrix> dev;
  const float* row(int64_t matrix, int64_t r) const { return f.data() + (matrix * rows + r) * cols; }
  const float* qrow(int64_t matrix, int64_t r) const {
    return (fq.empty() ? f.data() : fq.data()) + (matrix * rows + r) * cols;
  }
};

// The bytes of `rows` rows with the k-quants' dmin set to zero (A q only), or empty.
std::vector<uint8_t> without_minimums(GgmlType type, std::vector<uint8_t> bytes) {
  size_t block = 0, dmin_at = 0;
  if (type == GgmlType::Q2_K) {
    block = 84;
    dmin_at = 82;
  } else if (type == GgmlType::Q4_K) {
    block = 144;
    dmin_at = 2;
  } else {
    return {};
  }
  for (size_t b = 0; b + block <= bytes.size(); b += block) bytes[b + dmin_at] = bytes[b + dmin_at + 1] = 0;
  return bytes;
}

std::unique_ptr<TestMatrix> make_matrix(GgmlType type, int64_t cols, int64_t rows, int64_t count,
                                        std::mt19937& rng, const std::string& name) {
  auto m = std::make_unique<TestMatrix>();
  m->type = type;
  m->cols = cols;
  m->rows = rows;
  m->count = count;
  std::vector<uint8_t> bytes = random_blocks(type, rows * count, cols, rng);
  m->f.resize(static_cast<size_t>(rows * count * cols));
  const size_t rb = ggml_row_bytes(type, cols);
  for (int64_t r = 0; r < rows * count; ++r) dequantize_row(type, bytes.data() + r * rb, m->f.data() + r * cols, cols);
  const std::vector<uint8_t> integer_part = without_minimums(type, bytes);
  if (!integer_part.empty()) {
    m->fq.resize(m->f.size());
    for (int64_t r = 0; r < rows * count; ++r) {
      dequantize_row(type, integer_part.data() + r * rb, m->fq.data() + r * cols, cols);
    }
  }
  auto dm = upload_matrix(type, cols, rows, count, bytes.data());
  check(dm.ok(), name + ": upload: " + (dm.ok() ? std::string() : dm.status().message()));
  if (!dm.ok()) return nullptr;
  m->dev = std::move(*dm);
  return m;
}

// w . x with sum |w x|, sum |A q x| and sum |A q| (A q: the weight without the
// k-quants' minimum; the weight itself for the other formats).
struct Dot {
  double v = 0, abs_sum = 0, q_abs_sum = 0, q_abs = 0;
};

Dot dot(const TestMatrix& m, int64_t matrix, int64_t r, const float* x) {
  const float* w = m.row(matrix, r);
  const float* wq = m.qrow(matrix, r);
  Dot d;
  for (int64_t i = 0; i < m.cols; ++i) {
    const double p = static_cast<double>(w[i]) * x[i];
    d.v += p;
    d.abs_sum += std::fabs(p);
    d.q_abs_sum += std::fabs(static_cast<double>(wq[i]) * x[i]);
    d.q_abs += std::fabs(static_cast<double>(wq[i]));
  }
  return d;
}

// Tolerance of one plain output in the current precision.
double tol(const Dot& d) {
  switch (g_precision) {
    case MatmulPrecision::kExact: return 2e-6 * d.abs_sum + 1e-7;
    case MatmulPrecision::kF16Activations:
      // Round-to-nearest f16: |x - f16(x)| <= 2^-11 |x| in the normal range, <= 2^-25
      // below it; then the kExact bound for the products and sums.
      return 1.01 * (std::ldexp(d.q_abs_sum, -11) + std::ldexp(d.q_abs, -25)) + 2e-6 * d.abs_sum + 1e-7;
    default: return 2e-3 * d.abs_sum + 1e-6;
  }
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

// Expected value and tolerance of one output: plain, or paired SwiGLU times `scale`.
// abs_sum: sum |w x| of a plain output (0 when paired).
struct Expect {
  double v, tol, abs_sum;
};

// Largest errors of a case: as a fraction of the tolerance, and of sum |w x| (plain
// outputs only).
struct ErrorStats {
  double max_tol_ratio = 0, max_sum_ratio = 0;
  int bad = 0;
};

Expect expect(const TestMatrix& w, const TestMatrix* u, int64_t matrix, int64_t r, const float* x,
              float limit, double scale) {
  const Dot g = dot(w, matrix, r, x);
  if (!u) return {g.v, tol(g), g.abs_sum};
  const Dot up = dot(*u, matrix, r, x);
  const double gc = std::min(g.v, static_cast<double>(limit));
  const double uc = std::clamp(up.v, -static_cast<double>(limit), static_cast<double>(limit));
  const double tg = tol(g), tu = tol(up);
  const double t = (1.1 * tg * std::fabs(uc) + std::fabs(silu(gc)) * tu + 1.1 * tg * tu) * std::fabs(scale);
  return {silu(gc) * uc * scale, t + tol(Dot{}), 0.0};
}

void report(const std::string& name, const ErrorStats& st, int64_t total) {
  const int bad = st.bad;
  check(bad == 0, name + ": " + std::to_string(bad) + " of " + std::to_string(total) + " outputs out of tolerance");
  std::printf("%s %s (%lld outputs; max error %.3g of tolerance, %.3g of sum|wx|)\n", bad == 0 ? "ok  " : "FAIL",
              name.c_str(), static_cast<long long>(total), st.max_tol_ratio, st.max_sum_ratio);
}

void compare_one(const std::string& name, int64_t t, int64_t r, float got, const Expect& e, ErrorStats* st) {
  const double err = std::fabs(got - e.v);
  if (std::isfinite(err)) {
    st->max_tol_ratio = std::max(st->max_tol_ratio, err / e.tol);
    if (e.abs_sum > 0) st->max_sum_ratio = std::max(st->max_sum_ratio, err / e.abs_sum);
  }
  if (err <= e.tol && std::isfinite(got)) return;
  int* bad = &st->bad;
  if (++*bad <= 5) {
    std::printf("  %s: token/assignment %lld row %lld: got %.7g expected %.7g (tolerance %.3g)\n", name.c_str(),
                static_cast<long long>(t), static_cast<long long>(r), got, e.v, e.tol);
  }
}

// Dense mode: matrix `matrix` of a stacked weight, rows [row_begin, row_begin + n_rows),
// x and y with padded strides, optionally accumulating onto random y and paired.
void test_dense(GgmlType type, int64_t cols, int64_t rows, int n_tokens, std::mt19937& rng, int count = 1,
                int matrix = 0, int64_t row_begin = 0, int64_t n_rows = -1, bool accumulate = false,
                bool paired = false, float limit = INFINITY) {
  const int64_t nr = n_rows < 0 ? rows - row_begin : n_rows;
  const std::string name = std::string("dense ") + tname(type) + " " + std::to_string(rows) + "x" +
                           std::to_string(cols) + " count=" + std::to_string(count) + " matrix=" +
                           std::to_string(matrix) + " rows=[" + std::to_string(row_begin) + "+" +
                           std::to_string(nr) + ") tokens=" + std::to_string(n_tokens) +
                           (accumulate ? " accumulate" : "") +
                           (g_token_tile ? " tile=" + std::to_string(g_token_tile) : "") + (paired ? " paired limit=" + std::to_string(limit) : "") + case_suffix();
  auto w = make_matrix(type, cols, rows, count, rng, name);
  std::unique_ptr<TestMatrix> u = paired ? make_matrix(type, cols, rows, count, rng, name + " up") : nullptr;
  if (!w || (paired && !u)) return;
  const int64_t x_stride = cols + 4, y_stride = nr + 3;
  std::vector<float> x = random_x(static_cast<size_t>(x_stride * n_tokens), rng);
  std::vector<float> y0 = random_floats(static_cast<size_t>(y_stride * n_tokens), rng);
  DeviceVec<float> dx(x), dy(y0);
  MatmulLaunch l;
  l.w = &w->dev->m;
  l.w_up = paired ? &u->dev->m : nullptr;
  l.matrix = matrix;
  l.row_begin = row_begin;
  l.n_rows = n_rows;
  l.x = dx.get();
  l.x_stride = x_stride;
  l.y = dy.get();
  l.y_stride = y_stride;
  l.n_tokens = n_tokens;
  l.swiglu_limit = limit;
  l.accumulate = accumulate;
  l.token_tile = g_token_tile;
  l.precision = g_precision;
  l.exact_two_blocks = g_two_blocks;
  l.exact_k16 = g_k16;
  set_staged(&l, n_tokens, name);
  Status s = launch_matmul(l, nullptr);
  check(s.ok(), name + ": launch: " + s.message());
  const cudaError_t e = cudaDeviceSynchronize();
  check(e == cudaSuccess, name + ": kernel failed: " + cudaGetErrorString(e));
  if (!s.ok() || e != cudaSuccess) return;
  std::vector<float> y = dy.host();
  ErrorStats st;
  int& bad = st.bad;
  for (int t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < nr; ++r) {
      Expect ex = expect(*w, u.get(), matrix, row_begin + r, x.data() + t * x_stride, limit, 1.0);
      if (accumulate) ex.v += y0[t * y_stride + r];
      compare_one(name, t, r, y[t * y_stride + r], ex, &st);
    }
    // The padding between rows of y is never written.
    for (int64_t r = nr; r < y_stride; ++r) {
      if (y[t * y_stride + r] != y0[t * y_stride + r] && ++bad <= 5) {
        std::printf("  %s: token %d wrote padding column %lld\n", name.c_str(), t, static_cast<long long>(r));
      }
    }
  }
  report(name, st, static_cast<int64_t>(n_tokens) * nr);
}

// Grouped mode: group sizes `sizes` over matrices 0..sizes.size()-1 of a stack of
// `count` (>= groups), x rows gathered from a pool of `pool` rows, per-row scales.
void test_grouped(GgmlType type, int64_t cols, int64_t rows, const std::vector<int>& sizes, int count,
                  bool paired, float limit, bool gather, std::mt19937& rng) {
  std::vector<int32_t> offsets{0};
  for (int s : sizes) offsets.push_back(offsets.back() + s);
  const int total = offsets.back();
  std::string sz;
  for (int s : sizes) sz += (sz.empty() ? "" : ",") + std::to_string(s);
  const std::string name = std::string("grouped ") + tname(type) + " " + std::to_string(rows) + "x" +
                           std::to_string(cols) + " groups={" + sz + "}" + (gather ? " gathered+scaled" : "") +
                           (g_token_tile ? " tile=" + std::to_string(g_token_tile) : "") +
                           (paired ? " paired limit=" + std::to_string(limit) : "") + case_suffix();
  auto w = make_matrix(type, cols, rows, count, rng, name);
  std::unique_ptr<TestMatrix> u = paired ? make_matrix(type, cols, rows, count, rng, name + " up") : nullptr;
  if (!w || (paired && !u)) return;
  const int pool = gather ? 37 : total;
  const int64_t x_stride = cols;
  std::vector<float> x = random_x(static_cast<size_t>(x_stride * std::max(pool, 1)), rng);
  std::vector<int32_t> x_rows(std::max(total, 1));
  std::uniform_int_distribution<int> pick(0, std::max(pool, 1) - 1);
  for (int a = 0; a < total; ++a) x_rows[a] = gather ? pick(rng) : a;
  std::vector<float> scale = random_floats(std::max(total, 1), rng, 0.1f, 1.0f);
  const int64_t y_stride = rows;
  std::vector<float> y0 = random_floats(static_cast<size_t>(y_stride * (total + 1)), rng);
  DeviceVec<float> dx(x), dy(y0), dscale(scale);
  DeviceVec<int32_t> doff(offsets), drows(x_rows);
  MatmulLaunch l;
  l.w = &w->dev->m;
  l.w_up = paired ? &u->dev->m : nullptr;
  l.x = dx.get();
  l.x_stride = x_stride;
  l.y = dy.get();
  l.y_stride = y_stride;
  l.n_tokens = total + 5;  // an upper bound, as the MoE caller passes
  l.swiglu_limit = limit;
  l.group_offsets = doff.get();
  l.n_groups = static_cast<int>(sizes.size());
  l.x_rows = gather ? drows.get() : nullptr;
  l.row_scale = gather ? dscale.get() : nullptr;
  l.token_tile = g_token_tile;
  l.precision = g_precision;
  l.exact_two_blocks = g_two_blocks;
  l.exact_k16 = g_k16;
  set_staged(&l, pool, name);
  Status s = launch_matmul(l, nullptr);
  check(s.ok(), name + ": launch: " + s.message());
  const cudaError_t e = cudaDeviceSynchronize();
  check(e == cudaSuccess, name + ": kernel failed: " + cudaGetErrorString(e));
  if (!s.ok() || e != cudaSuccess) return;
  std::vector<float> y = dy.host();
  ErrorStats st;
  int& bad = st.bad;
  // The same launch again gives the same bits (fixed summation order).
  {
    DeviceVec<float> dy2(y0);
    l.y = dy2.get();
    Status s2 = launch_matmul(l, nullptr);
    const cudaError_t e2 = cudaDeviceSynchronize();
    check(s2.ok() && e2 == cudaSuccess, name + ": repeated launch failed: " + s2.message());
    if (s2.ok() && e2 == cudaSuccess) {
      std::vector<float> y2 = dy2.host();
      int differ = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        if (std::memcmp(&y[i], &y2[i], sizeof(float)) != 0 && ++differ <= 3) {
          std::printf("  %s: repeated launch differs at element %zu: %.9g then %.9g\n", name.c_str(), i, y[i], y2[i]);
        }
      }
      check(differ == 0, name + ": repeated launch differs in " + std::to_string(differ) + " elements");
    }
  }
  for (size_t g = 0; g < sizes.size(); ++g) {
    for (int a = offsets[g]; a < offsets[g + 1]; ++a) {
      const double sc = gather && paired ? scale[a] : 1.0;
      for (int64_t r = 0; r < rows; ++r) {
        const Expect ex = expect(*w, u.get(), static_cast<int64_t>(g), r, x.data() + x_rows[a] * x_stride, limit, sc);
        compare_one(name, a, r, y[a * y_stride + r], ex, &st);
      }
    }
  }
  // The row past the last assignment is never written.
  for (int64_t r = 0; r < rows; ++r) {
    if (y[total * y_stride + r] != y0[total * y_stride + r] && ++bad <= 5) {
      std::printf("  %s: wrote row %d past the assignments\n", name.c_str(), total);
    }
  }
  report(name, st, static_cast<int64_t>(total) * rows);
}

// The 32-token tile kernels against the default 64-token tile (kExact or
// kF16Activations): the same arithmetic in the same order, so every output must match
// bit for bit; dense and paired grouped (groups of 0, 1, 45 and 70 assignments).
void test_tile32_bitwise(GgmlType type, MatmulPrecision prec, std::mt19937& rng) {
  const int64_t cols = 512, rows = 200;
  const int n_tokens = 116;
  auto w = make_matrix(type, cols, rows, 4, rng, "tile32");
  auto u = make_matrix(type, cols, rows, 4, rng, "tile32 up");
  if (!w || !u) return;
  DeviceVec<float> dx(random_floats(static_cast<size_t>(cols) * n_tokens, rng));
  const std::vector<int32_t> offsets{0, 0, 1, 46, 116};
  DeviceVec<int32_t> doff(offsets);
  for (bool grouped : {false, true}) {
    std::vector<float> out[2];
    for (int v = 0; v < 2; ++v) {
      DeviceVec<float> dy(static_cast<size_t>(rows) * n_tokens);
      MatmulLaunch l;
      l.w = &w->dev->m;
      l.w_up = grouped ? &u->dev->m : nullptr;
      l.x = dx.get();
      l.x_stride = cols;
      l.y = dy.get();
      l.y_stride = rows;
      l.n_tokens = n_tokens;
      l.swiglu_limit = 10.0f;
      if (grouped) {
        l.group_offsets = doff.get();
        l.n_groups = 4;
      }
      l.token_tile = v == 0 ? 0 : 32;
      l.precision = prec;
      const Status st = launch_matmul(l, nullptr);
      check(st.ok() && cudaDeviceSynchronize() == cudaSuccess, "tile32 launch: " + st.message());
      out[v] = dy.host();
    }
    int64_t bad = 0, first = -1;
    for (size_t i = 0; i < out[0].size(); ++i) {
      if (std::memcmp(&out[0][i], &out[1][i], sizeof(float)) != 0) {
        if (first < 0) first = static_cast<int64_t>(i);
        ++bad;
      }
    }
    const std::string what = "tile 32 vs 64 " + tname(type) + (grouped ? " grouped paired " : " dense ") +
                             precision_name(prec);
    if (bad == 0) {
      std::printf("ok   %s: %zu outputs bit for bit\n", what.c_str(), out[0].size());
    } else {
      check(false, what + ": " + std::to_string(bad) + " outputs differ, first at token " +
                       std::to_string(first / rows) + " row " + std::to_string(first % rows) + ": " +
                       std::to_string(out[0][first]) + " (tile 64) vs " + std::to_string(out[1][first]) + " (tile 32)");
    }
  }
}

// Where the outputs `a` and `b` (row t of y at t * stride, `rows` values) differ, for
// diagnosing the staged kernels: the largest |a - b| relative to |a|, and bit masks of
// the 8-token groups within a 64-token tile (t % 64 / 8; in grouped mode t is the
// assignment, so this is approximate) and of the 16-row groups within a 128-row tile
// (r % 128 / 16) that hold differences.
std::string diff_pattern(const std::vector<float>& a, const std::vector<float>& b, int64_t stride, int64_t rows) {
  double worst = 0.0;
  unsigned tok_mask = 0, row_mask = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) == 0) continue;
    const int64_t t = static_cast<int64_t>(i) / stride, r = static_cast<int64_t>(i) % stride;
    if (r >= rows) continue;
    tok_mask |= 1u << ((t % 64) / 8);
    row_mask |= 1u << ((r % 128) / 16);
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]) / std::max(std::fabs(static_cast<double>(a[i])), 1e-30);
    if (!(d <= worst)) worst = d;  // NaN counts as worst
  }
  char buf[160];
  std::snprintf(buf, sizeof(buf), "largest relative difference %.3g, 8-token groups 0x%02x, 16-row groups 0x%02x", worst,
                tok_mask, row_mask);
  return buf;
}

// The staged kernels (MatmulLaunch::split_workspace) against the default kExact kernel:
// the same arithmetic in the same order, so every output must match bit for bit.
// Grouped (sizes set: assignments per matrix, x gathered from a pool of `pool` rows,
// per-row scales when paired) or dense (n_tokens tokens, matrix 1 of 2, rows from
// row_begin, strided x and y, accumulate onto random y).
void test_staged_bitwise(GgmlType type, int64_t cols, int64_t rows, bool paired, const std::vector<int>& sizes,
                         int n_tokens, int pool, std::mt19937& rng) {
  const bool grouped = !sizes.empty();
  std::vector<int32_t> offsets{0};
  for (int c : sizes) offsets.push_back(offsets.back() + c);
  const int total = grouped ? offsets.back() : n_tokens;
  const int count = grouped ? static_cast<int>(sizes.size()) : 2;
  const int64_t row_begin = grouped ? 0 : 3;
  const int64_t nr = rows - row_begin;
  const std::string name = std::string("staged vs default ") + tname(type) + " " + std::to_string(rows) + "x" +
                           std::to_string(cols) + (grouped ? " grouped " + std::to_string(sizes.size()) + " groups, " +
                                                                 std::to_string(total) + " assignments"
                                                           : " dense tokens=" + std::to_string(n_tokens)) +
                           (paired ? " paired" : "");
  auto w = make_matrix(type, cols, rows, count, rng, name);
  std::unique_ptr<TestMatrix> u = paired ? make_matrix(type, cols, rows, count, rng, name + " up") : nullptr;
  if (!w || (paired && !u)) return;
  const int x_rows_n = grouped ? pool : n_tokens;
  const int64_t x_stride = cols + 4, y_stride = nr + 3;
  DeviceVec<float> dx(random_floats(static_cast<size_t>(x_stride) * std::max(x_rows_n, 1), rng));
  std::vector<int32_t> x_rows(std::max(total, 1));
  std::uniform_int_distribution<int> pick(0, std::max(pool, 1) - 1);
  for (auto& r : x_rows) r = pick(rng);
  DeviceVec<int32_t> doff(offsets), drows(x_rows);
  DeviceVec<float> dscale(random_floats(std::max(total, 1), rng, 0.1f, 1.0f));
  const std::vector<float> y0 = random_floats(static_cast<size_t>(y_stride) * (total + 1), rng);
  std::vector<float> out[2];
  for (int v = 0; v < 2; ++v) {
    DeviceVec<float> dy(y0);
    MatmulLaunch l;
    l.w = &w->dev->m;
    l.w_up = paired ? &u->dev->m : nullptr;
    l.x = dx.get();
    l.x_stride = x_stride;
    l.y = dy.get();
    l.y_stride = y_stride;
    l.swiglu_limit = 10.0f;
    l.row_begin = row_begin;
    if (grouped) {
      l.n_tokens = total + 3;
      l.group_offsets = doff.get();
      l.n_groups = count;
      l.x_rows = drows.get();
      l.row_scale = paired ? dscale.get() : nullptr;
    } else {
      l.n_tokens = n_tokens;
      l.matrix = 1;
      l.accumulate = true;
    }
    if (v == 1) {
      l.split_workspace = staged_workspace(matmul_split_workspace_bytes(cols, std::max(x_rows_n, 1)));
      l.x_pool_rows = x_rows_n;
      if (!matmul_staged(l) && !staged_device()) {
        std::printf("skip %s: the device's shared memory (%d bytes per block) does not hold the staged kernels\n",
                    name.c_str(), max_shared_per_block());
        return;
      }
      check(matmul_staged(l), name + ": matmul_staged() is false (the staged kernel does not apply or fit)");
    }
    const Status st = launch_matmul(l, nullptr);
    const cudaError_t e = cudaDeviceSynchronize();
    check(st.ok() && e == cudaSuccess, name + (v ? ": staged" : ": default") + " launch: " + st.message() + " " +
                                           cudaGetErrorString(e));
    out[v] = dy.host();
  }
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < out[0].size(); ++i) {
    if (std::memcmp(&out[0][i], &out[1][i], sizeof(float)) != 0) {
      if (++bad <= 5) {
        std::printf("  %s: differs at assignment/token %lld row %lld: default %.9g staged %.9g (y0 %.9g)\n",
                    name.c_str(), static_cast<long long>(i / y_stride), static_cast<long long>(i % y_stride),
                    out[0][i], out[1][i], y0[i]);
      }
      if (first < 0) first = static_cast<int64_t>(i);
    }
  }
  if (bad == 0) {
    std::printf("ok   %s: %zu outputs bit for bit\n", name.c_str(), out[0].size());
  } else {
    check(false, name + ": " + std::to_string(bad) + " of " + std::to_string(out[0].size()) + " outputs differ; " +
                     diff_pattern(out[0], out[1], y_stride, nr));
  }
}

// A dense staged launch whose x_pool_rows is below n_tokens is refused, naming it.
void test_staged_errors(std::mt19937& rng) {
  auto w = make_matrix(GgmlType::Q8_0, 64, 16, 1, rng, "staged errors");
  if (!w) return;
  DeviceVec<float> dx(64 * 4), dy(16 * 4);
  MatmulLaunch l;
  l.w = &w->dev->m;
  l.x = dx.get();
  l.x_stride = 64;
  l.y = dy.get();
  l.y_stride = 16;
  l.n_tokens = 4;
  l.split_workspace = staged_workspace(matmul_split_workspace_bytes(64, 4));
  l.x_pool_rows = 4;
  if (!matmul_staged(l)) {
    std::printf("skip staged errors: the staged kernels do not fit this device\n");
    return;
  }
  l.x_pool_rows = 3;
  const Status s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("x_pool_rows 3") != std::string::npos,
        "staged launch with x_pool_rows 3 < 4 tokens is refused, naming it: " + s.message());
  if (!s.ok()) std::printf("ok   staged launch with too few x_pool_rows refused: %s\n", s.message().c_str());
}

void test_errors(std::mt19937& rng) {
  auto w = make_matrix(GgmlType::Q8_0, 64, 16, 1, rng, "errors");
  if (!w) return;
  DeviceVec<float> dx(64 * 4), dy(16 * 4);
  MatmulLaunch l;
  l.w = &w->dev->m;
  l.x = dx.get();
  l.x_stride = 64;
  l.y = dy.get();
  l.y_stride = 16;
  l.n_tokens = 4;
  l.row_begin = 10;
  l.n_rows = 10;
  Status s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("rows") != std::string::npos, "rows past the matrix are refused: " + s.message());
  l.row_begin = 0;
  l.matrix = 1;
  s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("matrix 1") != std::string::npos, "matrix past the stack is refused: " + s.message());
  l.matrix = 0;
  l.x_stride = 63;
  s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("stride") != std::string::npos, "misaligned x stride is refused: " + s.message());
  l.x_stride = 64;
  auto f = make_matrix(GgmlType::F32, 64, 16, 1, rng, "errors f32");
  if (!f) return;
  l.w = &f->dev->m;
  l.precision = MatmulPrecision::kExact;
  s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("F32") != std::string::npos, "exact F32 weights are refused: " + s.message());
  l.precision = MatmulPrecision::kF16Activations;
  s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("F32") != std::string::npos, "f16act F32 weights are refused: " + s.message());
  l.precision = static_cast<MatmulPrecision>(7);
  s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("precision 7") != std::string::npos, "an unknown precision is refused: " + s.message());
  l.precision = MatmulPrecision::kF16;
  s = launch_matmul(l, nullptr);
  check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, "f16 F32 weights launch: " + s.message());
  l.token_tile = 32;
  s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("tile 32") != std::string::npos, "kF16 with 32-token tiles is refused: " + s.message());
  l.token_tile = 48;
  l.precision = MatmulPrecision::kExact;
  l.w = &w->dev->m;
  s = launch_matmul(l, nullptr);
  check(!s.ok() && s.message().find("tile 48") != std::string::npos, "a 48-token tile is refused: " + s.message());
  std::printf("ok   launch errors name what is wrong\n");
}

// Precision names (host only): the three accepted ones, and an error naming the text.
void test_precision_names() {
  const int failures_before = g_failures;
  const struct {
    const char* text;
    MatmulPrecision want;
  } names[] = {{"exact", MatmulPrecision::kExact},
               {"f16act", MatmulPrecision::kF16Activations},
               {"f16", MatmulPrecision::kF16}};
  for (const auto& n : names) {
    const Result<MatmulPrecision> r = parse_matmul_precision(n.text);
    check(r.ok() && r.value() == n.want, std::string("precision name ") + n.text + ": " +
                                             (r.ok() ? precision_name(r.value()) : r.status().message()));
  }
  for (const char* bad : {"", "F16", "f16act ", "fp16"}) {
    const Result<MatmulPrecision> r = parse_matmul_precision(bad);
    check(!r.ok() && r.status().message().find(std::string("\"") + bad + "\"") != std::string::npos,
          std::string("precision name \"") + bad + "\" is refused, naming it: " + r.status().message());
  }
  if (g_failures == failures_before) std::printf("ok   precision names (exact, f16act, f16; others refused)\n");
}

void bench_dense(MatmulPrecision prec, GgmlType type, int64_t rows, int64_t cols, int n_tokens, int token_tile = 0,
                 bool two_blocks = false, bool k16 = false) {
  auto dm = random_matrix(type, cols, rows, 1, 1234);
  if (!dm.ok()) {
    std::printf("bench %s: %s\n", tname(type).c_str(), dm.status().message().c_str());
    return;
  }
  std::mt19937 rng(5);
  DeviceVec<float> dx(random_floats(static_cast<size_t>(cols) * n_tokens, rng)), dy(static_cast<size_t>(rows) * n_tokens);
  MatmulLaunch l;
  l.w = &(*dm)->m;
  l.x = dx.get();
  l.x_stride = cols;
  l.y = dy.get();
  l.y_stride = rows;
  l.n_tokens = n_tokens;
  l.token_tile = token_tile;
  l.precision = prec;
  l.exact_two_blocks = two_blocks;
  l.exact_k16 = k16;
  if (g_bench_staged) {
    l.split_workspace = staged_workspace(matmul_split_workspace_bytes(cols, n_tokens));
    l.x_pool_rows = n_tokens;
  }
  const bool staged = matmul_staged(l);
  Status st;
  const double us = time_us([&] { st = launch_matmul(l, nullptr); }, 10);
  check(st.ok() && cudaDeviceSynchronize() == cudaSuccess, std::string("bench launch: ") + st.message());
  const double flops = 2.0 * rows * cols * n_tokens;
  const double bytes = static_cast<double>(l.w->data_bytes() + l.w->scale_bytes());
  std::printf("matmul %s%s%s%s %s %lldx%lld tokens=%d: %.1f us, %.1f TFLOP/s (weights %.1f GB/s%s)\n",
              precision_name(prec), staged ? " staged" : "", two_blocks ? " two-blocks" : "", k16 ? " k16" : "", tname(type).c_str(),
              static_cast<long long>(rows), static_cast<long long>(cols), n_tokens, us, flops / us * 1e-6,
              bytes / us * 1e-3, token_tile ? ("; token tile " + std::to_string(token_tile)).c_str() : "");
}

void bench_grouped(MatmulPrecision prec, GgmlType type, int64_t rows, int64_t cols, int experts, int n_tokens,
                   int per_token, bool paired, bool two_blocks = false, bool k16 = false, int token_tile = 0) {
  auto dw = random_matrix(type, cols, rows, experts, 77);
  if (!dw.ok()) {
    std::printf("bench grouped %s: %s\n", tname(type).c_str(), dw.status().message().c_str());
    return;
  }
  std::unique_ptr<OwnedDeviceMatrix> du;
  if (paired) {
    auto r = random_matrix(type, cols, rows, experts, 78);
    if (!r.ok()) {
      std::printf("bench grouped %s up: %s\n", tname(type).c_str(), r.status().message().c_str());
      return;
    }
    du = std::move(*r);
  }
  const int total = n_tokens * per_token;
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> pick(0, experts - 1);
  std::vector<int> counts(experts, 0);
  for (int a = 0; a < total; ++a) ++counts[pick(rng)];
  std::vector<int32_t> offsets{0};
  for (int c : counts) offsets.push_back(offsets.back() + c);
  std::vector<int32_t> x_rows(total);
  for (int a = 0; a < total; ++a) x_rows[a] = a % n_tokens;
  std::vector<float> scale = random_floats(total, rng, 0.1f, 1.0f);
  DeviceVec<float> dx(random_floats(static_cast<size_t>(cols) * n_tokens, rng)), dy(static_cast<size_t>(rows) * total),
      dscale(scale);
  DeviceVec<int32_t> doff(offsets), drows(x_rows);
  MatmulLaunch l;
  l.w = &(*dw)->m;
  l.w_up = paired ? &du->m : nullptr;
  l.x = dx.get();
  l.x_stride = cols;
  l.y = dy.get();
  l.y_stride = rows;
  l.n_tokens = total;
  l.swiglu_limit = 10.0f;
  l.group_offsets = doff.get();
  l.n_groups = experts;
  l.x_rows = drows.get();
  l.row_scale = paired ? dscale.get() : nullptr;
  l.precision = prec;
  l.exact_two_blocks = two_blocks;
  l.exact_k16 = k16;
  l.token_tile = token_tile;
  if (g_bench_staged) {
    l.split_workspace = staged_workspace(matmul_split_workspace_bytes(cols, n_tokens));
    l.x_pool_rows = n_tokens;
  }
  const bool staged = matmul_staged(l);
  Status st;
  const double us = time_us([&] { st = launch_matmul(l, nullptr); }, 5);
  check(st.ok() && cudaDeviceSynchronize() == cudaSuccess, std::string("bench grouped launch: ") + st.message());
  const double flops = 2.0 * rows * cols * total * (paired ? 2 : 1);
  const double bytes = static_cast<double>(l.w->data_bytes() + l.w->scale_bytes()) * (paired ? 2 : 1);
  std::printf("matmul %s%s%s%s %s%s %lldx%lld tokens=%d: %.1f us, %.1f TFLOP/s (grouped: %d experts, %d assignments; "
              "weights %.1f GB/s%s)\n",
              precision_name(prec), staged ? " staged" : "", two_blocks ? " two-blocks" : "", k16 ? " k16" : "", tname(type).c_str(), paired ? " gate+up" : "", static_cast<long long>(rows),
              static_cast<long long>(cols), n_tokens, us, flops / us * 1e-6, experts, total, bytes / us * 1e-3,
              token_tile ? ("; token tile " + std::to_string(token_tile)).c_str() : "");
}

// The staged kernels bit for bit against the default kExact kernels on the prefill's
// expert shapes (random device weights, routing as bench_grouped: `experts` matrices,
// n_tokens * per_token assignments, x gathered from n_tokens rows).
void test_staged_prefill_shape(GgmlType type, int64_t rows, int64_t cols, int experts, int n_tokens, int per_token,
                               bool paired) {
  const std::string name = std::string("staged vs default ") + tname(type) + (paired ? " gate+up " : " ") +
                           std::to_string(rows) + "x" + std::to_string(cols) + " grouped " + std::to_string(experts) +
                           " experts, " + std::to_string(n_tokens * per_token) + " assignments";
  auto dw = random_matrix(type, cols, rows, experts, 177);
  auto du = paired ? random_matrix(type, cols, rows, experts, 178) : random_matrix(type, 256, 1, 1, 1);
  check(dw.ok() && du.ok(), name + ": weights: " + (dw.ok() ? du.status().message() : dw.status().message()));
  if (!dw.ok() || !du.ok()) return;
  const int total = n_tokens * per_token;
  std::mt19937 rng(19);
  std::uniform_int_distribution<int> pick(0, experts - 1);
  std::vector<int> counts(experts, 0);
  for (int a = 0; a < total; ++a) ++counts[pick(rng)];
  std::vector<int32_t> offsets{0};
  for (int c : counts) offsets.push_back(offsets.back() + c);
  std::vector<int32_t> x_rows(total);
  std::uniform_int_distribution<int> pick_row(0, n_tokens - 1);
  for (auto& r : x_rows) r = pick_row(rng);
  DeviceVec<float> dx(random_floats(static_cast<size_t>(cols) * n_tokens, rng));
  DeviceVec<float> dscale(random_floats(total, rng, 0.1f, 1.0f));
  DeviceVec<int32_t> doff(offsets), drows(x_rows);
  std::vector<float> out[2];
  for (int v = 0; v < 2; ++v) {
    DeviceVec<float> dy(static_cast<size_t>(rows) * total);
    MatmulLaunch l;
    l.w = &(*dw)->m;
    l.w_up = paired ? &(*du)->m : nullptr;
    l.x = dx.get();
    l.x_stride = cols;
    l.y = dy.get();
    l.y_stride = rows;
    l.n_tokens = total;
    l.swiglu_limit = 10.0f;
    l.group_offsets = doff.get();
    l.n_groups = experts;
    l.x_rows = drows.get();
    l.row_scale = paired ? dscale.get() : nullptr;
    if (v == 1) {
      l.split_workspace = staged_workspace(matmul_split_workspace_bytes(cols, n_tokens));
      l.x_pool_rows = n_tokens;
      if (!matmul_staged(l) && !staged_device()) {
        std::printf("skip %s: the device's shared memory (%d bytes per block) does not hold the staged kernels\n",
                    name.c_str(), max_shared_per_block());
        return;
      }
      check(matmul_staged(l), name + ": matmul_staged() is false");
    }
    const Status st = launch_matmul(l, nullptr);
    const cudaError_t e = cudaDeviceSynchronize();
    check(st.ok() && e == cudaSuccess, name + (v ? ": staged" : ": default") + " launch: " + st.message() + " " +
                                           cudaGetErrorString(e));
    out[v] = dy.host();
  }
  int64_t bad = 0;
  for (size_t i = 0; i < out[0].size(); ++i) {
    if (std::memcmp(&out[0][i], &out[1][i], sizeof(float)) != 0 && ++bad <= 5) {
      std::printf("  %s: differs at assignment %lld row %lld: default %.9g staged %.9g\n", name.c_str(),
                  static_cast<long long>(i / rows), static_cast<long long>(i % rows), out[0][i], out[1][i]);
    }
  }
  if (bad == 0) {
    std::printf("ok   %s: %zu outputs bit for bit\n", name.c_str(), out[0].size());
  } else {
    check(false, name + ": " + std::to_string(bad) + " of " + std::to_string(out[0].size()) + " outputs differ; " +
                     diff_pattern(out[0], out[1], rows, rows));
  }
}

}  // namespace

int main() {
  test_precision_names();
  if (!gpu_present()) return 77;
  Status init = matmul_init();
  check(init.ok(), "matmul_init: " + init.message());
  std::mt19937 rng(20261129);

  const GgmlType all[] = {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0,
                          GgmlType::Q2_K, GgmlType::Q4_K, GgmlType::IQ2_XXS};
  const GgmlType quantized[] = {GgmlType::F16, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q4_K, GgmlType::IQ2_XXS};
  const std::vector<int> sizes{0, 1, 150, 0, 37, 64, 0};
  for (MatmulPrecision prec : {MatmulPrecision::kExact, MatmulPrecision::kF16, MatmulPrecision::kF16Activations}) {
    g_precision = prec;
    const bool exact = prec != MatmulPrecision::kF16;  // integer weights: F32 refused
    for (GgmlType t : all) {
      if (exact && t == GgmlType::F32) continue;  // refused (test_errors)
      for (int n : {1, 7, 64, 200}) test_dense(t, 512, 200, n, rng);
    }
    // Columns not a multiple of the 64-column step; 300 tokens (three 128-token tiles).
    for (GgmlType t : {GgmlType::F16, GgmlType::Q8_0}) {
      test_dense(t, 96, 130, 7, rng);
      test_dense(t, 160, 257, 300, rng);
    }
    // Sub-ranges of a stacked matrix, accumulate, paired SwiGLU with a limit.
    for (GgmlType t : all) {
      if (exact && t == GgmlType::F32) continue;
      test_dense(t, 256, 300, 200, rng, 2, 1, 37, 150, true);
      test_dense(t, 256, 300, 7, rng, 3, 2, 129, -1, false);
      test_dense(t, 256, 150, 64, rng, 2, 1, 0, -1, false, true, 0.5f);
      test_dense(t, 256, 150, 200, rng, 1, 0, 20, 100, true, true, INFINITY);
    }
    // Grouped: empty groups, a single assignment, one group of three 64-assignment tiles.
    for (GgmlType t : all) {
      if (exact && t == GgmlType::F32) continue;
      test_grouped(t, 256, 130, sizes, 8, false, INFINITY, false, rng);
      test_grouped(t, 256, 130, sizes, 8, false, INFINITY, true, rng);
      test_grouped(t, 256, 130, sizes, 7, true, 0.5f, true, rng);
    }
    test_grouped(GgmlType::IQ2_XXS, 512, 64, std::vector<int>(300, 1), 300, true, 10.0f, true, rng);
    test_grouped(GgmlType::Q8_0, 64, 64, {0, 0, 0}, 3, false, INFINITY, true, rng);
    // Forced token tiles: 64 where the launcher would pick 128 and the reverse.
    g_token_tile = 64;
    test_dense(GgmlType::Q4_K, 256, 200, 200, rng, 2, 1, 37, 150, true);
    g_token_tile = 128;
    test_dense(GgmlType::Q8_0, 256, 200, 7, rng);
    test_dense(GgmlType::Q2_K, 512, 200, 200, rng);
    test_grouped(GgmlType::Q2_K, 256, 130, sizes, 8, false, INFINITY, true, rng);
    g_token_tile = 0;
    // Activations of a large dynamic range, plain and through the paired SwiGLU (the
    // limit keeps the large products finite), dense and grouped.
    g_wide_x = true;
    for (GgmlType t : quantized) {
      test_dense(t, 1024, 130, 70, rng);
      test_dense(t, 256, 150, 64, rng, 2, 1, 0, -1, false, true, 10.0f);
      test_grouped(t, 512, 130, sizes, 7, true, 10.0f, true, rng);
    }
    g_wide_x = false;
  }
  g_precision = MatmulPrecision::kExact;
  // The kernels compiled for two blocks per SM (kExact, unpaired, 64-token tiles).
  g_two_blocks = true;
  for (GgmlType t : quantized) {
    test_dense(t, 512, 200, 200, rng, 2, 1, 0, -1, true);
    test_grouped(t, 256, 130, sizes, 8, false, INFINITY, true, rng);
  }
  g_wide_x = true;
  test_dense(GgmlType::Q2_K, 1024, 130, 70, rng);
  g_wide_x = false;
  // Two blocks per SM with the scale per 16 columns (both tuning options).
  g_k16 = true;
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K}) {
    test_dense(t, 512, 200, 200, rng, 2, 1, 0, -1, true);
    test_grouped(t, 256, 130, sizes, 8, false, INFINITY, true, rng);
  }
  g_k16 = false;
  g_two_blocks = false;
  // The kernels applying the scale per 16 columns for every format (kExact tuning;
  // the former default).
  g_k16 = true;
  for (GgmlType t : quantized) {
    test_dense(t, 512, 200, 200, rng, 2, 1, 0, -1, true);
    test_dense(t, 256, 150, 64, rng, 2, 1, 0, -1, false, true, 0.5f);
    test_grouped(t, 256, 130, sizes, 7, true, 0.5f, true, rng);
    test_grouped(t, 256, 130, sizes, 8, false, INFINITY, true, rng);
  }
  g_wide_x = true;
  for (GgmlType t : quantized) {
    test_dense(t, 1024, 130, 70, rng);
    test_grouped(t, 512, 130, sizes, 7, true, 10.0f, true, rng);
  }
  g_wide_x = false;
  g_k16 = false;
  // 32-token tiles (kExact, two blocks per SM): dense, paired, grouped (a group of
  // 150 spans five tiles), wide activations.
  g_token_tile = 32;
  for (GgmlType t : quantized) {
    test_dense(t, 512, 200, 200, rng, 2, 1, 0, -1, true);
    test_dense(t, 256, 150, 7, rng);
    test_dense(t, 256, 150, 64, rng, 2, 1, 0, -1, false, true, 0.5f);
    test_grouped(t, 256, 130, sizes, 7, true, 0.5f, true, rng);
    test_grouped(t, 256, 130, sizes, 8, false, INFINITY, true, rng);
  }
  test_grouped(GgmlType::IQ2_XXS, 512, 64, std::vector<int>(300, 1), 300, true, 10.0f, true, rng);
  g_wide_x = true;
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::IQ2_XXS}) {
    test_dense(t, 1024, 130, 70, rng);
    test_grouped(t, 512, 130, sizes, 7, true, 10.0f, true, rng);
  }
  g_wide_x = false;
  g_token_tile = 0;
  // kF16Activations: the kernels compiled for two blocks per SM and the 32-token tiles
  // (the default 64-token tiles ran in the precision loop above).
  g_precision = MatmulPrecision::kF16Activations;
  g_two_blocks = true;
  for (GgmlType t : quantized) {
    test_dense(t, 512, 200, 200, rng, 2, 1, 0, -1, true);
    test_grouped(t, 256, 130, sizes, 8, false, INFINITY, true, rng);
  }
  g_two_blocks = false;
  g_token_tile = 32;
  for (GgmlType t : quantized) {
    test_dense(t, 512, 200, 200, rng, 2, 1, 0, -1, true);
    test_dense(t, 256, 150, 64, rng, 2, 1, 0, -1, false, true, 0.5f);
    test_grouped(t, 256, 130, sizes, 7, true, 0.5f, true, rng);
    test_grouped(t, 256, 130, sizes, 8, false, INFINITY, true, rng);
  }
  test_grouped(GgmlType::IQ2_XXS, 512, 64, std::vector<int>(300, 1), 300, true, 10.0f, true, rng);
  g_wide_x = true;
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::IQ2_XXS}) {
    test_dense(t, 1024, 130, 70, rng);
    test_grouped(t, 512, 130, sizes, 7, true, 10.0f, true, rng);
  }
  g_wide_x = false;
  g_token_tile = 0;
  g_precision = MatmulPrecision::kExact;
  for (MatmulPrecision prec : {MatmulPrecision::kExact, MatmulPrecision::kF16Activations}) {
    for (GgmlType t : quantized) test_tile32_bitwise(t, prec, rng);
  }
  // The staged kernels (split activations, cp.async stages): against the CPU reference
  // through the cases above (every type: those without a staged kernel must not take
  // it), then bit for bit against the default kExact kernel.
  g_staged = true;
  for (GgmlType t : quantized) {
    for (int n : {1, 7, 64, 200}) test_dense(t, 512, 200, n, rng);
    test_dense(t, 256, 300, 200, rng, 2, 1, 37, 150, true);
    test_dense(t, 256, 150, 64, rng, 2, 1, 0, -1, false, true, 0.5f);
    test_dense(t, 256, 150, 200, rng, 1, 0, 20, 100, true, true, INFINITY);
    test_grouped(t, 256, 130, sizes, 8, false, INFINITY, false, rng);
    test_grouped(t, 256, 130, sizes, 8, false, INFINITY, true, rng);
    test_grouped(t, 256, 130, sizes, 7, true, 0.5f, true, rng);
  }
  test_dense(GgmlType::Q8_0, 96, 130, 7, rng);     // 3 chunks: the last step has one
  test_dense(GgmlType::Q8_0, 160, 257, 300, rng);  // 5 chunks, three row tiles
  test_grouped(GgmlType::IQ2_XXS, 512, 64, std::vector<int>(300, 1), 300, true, 10.0f, true, rng);
  test_grouped(GgmlType::Q8_0, 64, 64, {0, 0, 0}, 3, false, INFINITY, true, rng);
  g_wide_x = true;
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::IQ2_XXS, GgmlType::Q2_K}) {
    test_dense(t, 1024, 130, 70, rng);
    test_dense(t, 256, 150, 64, rng, 2, 1, 0, -1, false, true, 10.0f);
    test_grouped(t, 512, 130, sizes, 7, true, 10.0f, true, rng);
    test_grouped(t, 1024, 130, sizes, 8, false, INFINITY, true, rng);
  }
  g_wide_x = false;
  g_staged = false;
  {
    std::uniform_int_distribution<int> expert_size(0, 100);
    std::vector<int> experts(32);
    for (auto& c : experts) c = expert_size(rng);
    for (bool paired : {true, false}) {
      for (GgmlType t : {GgmlType::IQ2_XXS, GgmlType::Q8_0}) {
        test_staged_bitwise(t, 4096, 300, paired, experts, 0, 256, rng);  // 64 steps: the stage ring wraps
        test_staged_bitwise(t, 512, 130, paired, sizes, 0, 37, rng);
        test_staged_bitwise(t, 512, 200, paired, {}, 200, 0, rng);
        test_staged_bitwise(t, 1024, 131, paired, {}, 7, 0, rng);
      }
      test_staged_bitwise(GgmlType::Q8_0, 96, 130, paired, {}, 70, 0, rng);
      if (!paired) {  // Q2_K: unpaired only (the experts' down product)
        test_staged_bitwise(GgmlType::Q2_K, 2048, 300, false, experts, 0, 256, rng);
        test_staged_bitwise(GgmlType::Q2_K, 256, 130, false, sizes, 0, 37, rng);
        test_staged_bitwise(GgmlType::Q2_K, 1024, 200, false, {}, 200, 0, rng);
        test_staged_bitwise(GgmlType::Q2_K, 512, 131, false, {}, 7, 0, rng);
      }
      test_staged_bitwise(GgmlType::Q8_0, 160, 257, paired, {0, 65, 1}, 0, 20, rng);
    }
  }
  test_errors(rng);
  test_staged_errors(rng);
  test_staged_prefill_shape(GgmlType::IQ2_XXS, 2048, 4096, 256, 2048, 6, true);  // experts' gate+up
  test_staged_prefill_shape(GgmlType::Q2_K, 4096, 2048, 256, 2048, 6, false);    // experts' down

  if (g_failures == 0) {
    for (MatmulPrecision prec : {MatmulPrecision::kExact, MatmulPrecision::kF16, MatmulPrecision::kF16Activations}) {
      bench_dense(prec, GgmlType::Q8_0, 32768, 1024, 2048);   // attn_q_b
      bench_dense(prec, GgmlType::Q8_0, 1024, 4096, 2048);
      bench_dense(prec, GgmlType::F16, 1024, 4096, 2048);
      bench_dense(prec, GgmlType::Q8_0, 4096, 8192, 2048);    // out_b-like
      // The same shapes with the other token tile, for tuning.
      bench_dense(prec, GgmlType::Q8_0, 32768, 1024, 2048, prec != MatmulPrecision::kF16 ? 128 : 64);
      bench_dense(prec, GgmlType::Q8_0, 4096, 8192, 2048, prec != MatmulPrecision::kF16 ? 128 : 64);
      bench_grouped(prec, GgmlType::IQ2_XXS, 2048, 4096, 256, 2048, 6, true);   // experts' gate+up
      bench_grouped(prec, GgmlType::Q2_K, 4096, 2048, 256, 2048, 6, false);     // experts' down
    }
    // kExact unpaired 64-token tiles compiled for two blocks per SM (tuning), with the
    // scale per 32 columns (the default form) and per 16.
    for (bool k16 : {false, true}) {
      bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 32768, 1024, 2048, 0, true, k16);
      bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 4096, 8192, 2048, 0, true, k16);
      bench_dense(MatmulPrecision::kExact, GgmlType::F16, 1024, 4096, 2048, 0, true, k16);
      bench_grouped(MatmulPrecision::kExact, GgmlType::Q2_K, 4096, 2048, 256, 2048, 6, false, true, k16);
    }
    // kExact with the scale applied per 16 columns (tuning; the former default).
    bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 32768, 1024, 2048, 0, false, true);
    bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 4096, 8192, 2048, 0, false, true);
    bench_dense(MatmulPrecision::kExact, GgmlType::F16, 1024, 4096, 2048, 0, false, true);
    bench_grouped(MatmulPrecision::kExact, GgmlType::IQ2_XXS, 2048, 4096, 256, 2048, 6, true, false, true);
    bench_grouped(MatmulPrecision::kExact, GgmlType::Q2_K, 4096, 2048, 256, 2048, 6, false, false, true);
    // kExact 32-token tiles, two blocks per SM (tuning for the experts' small groups).
    bench_grouped(MatmulPrecision::kExact, GgmlType::IQ2_XXS, 2048, 4096, 256, 2048, 6, true, false, false, 32);
    bench_grouped(MatmulPrecision::kExact, GgmlType::Q2_K, 4096, 2048, 256, 2048, 6, false, false, false, 32);
    bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 4096, 8192, 2048, 32);
    bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 32768, 1024, 2048, 32);
    // kF16Activations as the prefill launches it: dense two blocks per SM; grouped with
    // 64- and 32-token tiles (the GB10 fallbacks).
    const MatmulPrecision f16x = MatmulPrecision::kF16Activations;
    // Staged kExact kernels (split activations timed with the product).
    g_bench_staged = true;
    bench_grouped(MatmulPrecision::kExact, GgmlType::IQ2_XXS, 2048, 4096, 256, 2048, 6, true);
    bench_grouped(MatmulPrecision::kExact, GgmlType::Q2_K, 4096, 2048, 256, 2048, 6, false);
    bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 32768, 1024, 2048);
    bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 4096, 8192, 2048);
    bench_dense(MatmulPrecision::kExact, GgmlType::Q8_0, 1024, 4096, 2048);
    g_bench_staged = false;
    bench_dense(f16x, GgmlType::Q8_0, 32768, 1024, 2048, 0, true);
    bench_dense(f16x, GgmlType::Q8_0, 4096, 8192, 2048, 0, true);
    bench_dense(f16x, GgmlType::Q8_0, 32768, 1024, 2048, 32);
    bench_grouped(f16x, GgmlType::IQ2_XXS, 2048, 4096, 256, 2048, 6, true, false, false, 32);
    bench_grouped(f16x, GgmlType::Q2_K, 4096, 2048, 256, 2048, 6, false, false, false, 32);
    bench_grouped(f16x, GgmlType::Q2_K, 4096, 2048, 256, 2048, 6, false, true);
  } else {
    std::printf("benchmark skipped: correctness failures above\n");
  }
  return finish("matmul_test");
}
