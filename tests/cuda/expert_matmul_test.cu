// The prefill's grouped routed-expert products on integer tensor cores
// (cuda/expert_matmul.h) against a CPU reference (format/quant.h dequantization, dot
// products and magnitudes in double) within the header's precision bound, and against
// launch_matmul's kExact kernels (cuda/matmul.h) on the same inputs (the difference
// printed). Shapes: the tiny fixtures' (8 experts, 256 columns: gate/up 256 x 256, down
// 256 x 256; few assignments, empty groups, a group of one, groups over several
// 32-assignment tiles, one huge group) and the real ones (256 experts, 2048 tokens x 6
// assignments: gate/up 2048 x 4096 IQ2_XXS, down 4096 x 2048 Q2_K) with a skewed expert
// popularity (empty groups, small and large ones) and with one expert in every token.
// Outputs are NaN-filled before each launch (an unwritten element fails), the row after
// the last assignment must stay untouched, repeats and the tuning variants
// (ExpertMatmulOptions, the scaled-digit gate+up kernels included) must agree with the
// default bit for bit, a non-finite x
// block must give NaN exactly in the outputs that read it, and bad launches are refused
// with a message. At the real shapes every output is compared with kExact and a sample
// of assignments (all rows) with the CPU. Then benchmarks at the real shapes: one table
// per product of us and effective TOPS (2 rows cols assignments per product; digit split
// included) of every variant, with its ratio to the prefill's options of today and to the
// defaults; and kExact.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/device_limits.h"
#include "cuda/device_model.h"
#include "cuda/expert_matmul.h"
#include "cuda/matmul.h"
#include "cuda_test_util.h"
#include "format/iq2xxs_grid.h"
#include "format/quant.h"

using namespace ds4;
using namespace ds4::test;

namespace {

constexpr double kUnit = 1.0 / 16777216.0;  // 2^-24

// The scale s_b of 256 values of x (header): 2^(E - 30), max |x| < 2^E, E >= -96.
double block_scale(const float* x) {
  float m = 0.0f;
  for (int i = 0; i < 256; ++i) m = std::max(m, std::fabs(x[i]));
  int e = 0;
  std::frexp(m, &e);
  e = std::max(e, -96);
  return std::ldexp(1.0, e - 30);
}

// A device stack of expert matrices and host access to its rows in the file layout.
struct Stack {
  GgmlType type;
  int64_t cols, rows, count;
  std::unique_ptr<OwnedDeviceMatrix> dev;
  std::map<int64_t, std::vector<uint8_t>> file_rows;  // matrix -> rows x file row bytes

  size_t file_row_bytes() const { return ggml_row_bytes(type, cols); }
  // Row r of matrix m in the file layout (copied from the device once per matrix).
  const uint8_t* row(int64_t m, int64_t r) {
    auto it = file_rows.find(m);
    if (it == file_rows.end()) {
      std::vector<uint8_t> bytes(file_row_bytes() * rows);
      const DeviceMatrix& d = dev->m;
      const size_t drb = d.data_row_bytes();
      std::vector<uint8_t> data(drb * rows);
      cudaMemcpy(data.data(), d.data + m * rows * drb, data.size(), cudaMemcpyDeviceToHost);
      if (type == GgmlType::IQ2_XXS) {
        const int64_t blocks = cols / 256;
        std::vector<uint16_t> sc(blocks * rows);
        cudaMemcpy(sc.data(), d.scales + m * rows * blocks, sc.size() * 2, cudaMemcpyDeviceToHost);
        for (int64_t rr = 0; rr < rows; ++rr) {
          for (int64_t b = 0; b < blocks; ++b) {
            uint8_t* blk = bytes.data() + rr * file_row_bytes() + b * 66;
            std::memcpy(blk, &sc[rr * blocks + b], 2);
            std::memcpy(blk + 2, data.data() + rr * drb + b * 64, 64);
          }
        }
      } else {
        bytes = data;  // Q2_K: the device rows are the file's
      }
      it = file_rows.emplace(m, std::move(bytes)).first;
    }
    return it->second.data() + r * file_row_bytes();
  }
};

std::unique_ptr<Stack> device_stack(GgmlType type, int64_t cols, int64_t rows, int64_t count, uint64_t seed,
                                    const std::string& name) {
  auto s = std::make_unique<Stack>();
  s->type = type;
  s->cols = cols;
  s->rows = rows;
  s->count = count;
  auto d = random_matrix(type, cols, rows, count, seed);
  check(d.ok(), name + ": random_matrix: " + (d.ok() ? std::string() : d.status().message()));
  if (!d.ok()) return nullptr;
  s->dev = std::move(*d);
  return s;
}

std::unique_ptr<Stack> host_stack(GgmlType type, int64_t cols, int64_t rows, int64_t count, std::mt19937& rng,
                                  const std::string& name) {
  auto s = std::make_unique<Stack>();
  s->type = type;
  s->cols = cols;
  s->rows = rows;
  s->count = count;
  std::vector<uint8_t> bytes = random_blocks(type, rows * count, cols, rng);
  auto d = upload_matrix(type, cols, rows, count, bytes.data());
  check(d.ok(), name + ": upload: " + (d.ok() ? std::string() : d.status().message()));
  if (!d.ok()) return nullptr;
  s->dev = std::move(*d);
  return s;
}

// One product's exact value and the terms of the header's bound.
struct Terms {
  double dot = 0, mag = 0, qerr = 0, minerr = 0;
  double bound(int64_t cols) const {
    return qerr + static_cast<double>(cols / 256 + 24) * kUnit * mag + minerr;
  }
};

Terms row_terms(Stack& s, int64_t m, int64_t r, const float* x) {
  const uint8_t* row = s.row(m, r);
  std::vector<float> w(s.cols);
  dequantize_row(s.type, row, w.data(), s.cols);
  Terms t;
  for (int64_t b = 0; b < s.cols / 256; ++b) {
    const double sb = block_scale(x + b * 256);
    double dd = 0, dmin = 0;
    if (s.type == GgmlType::Q2_K) {
      uint16_t dh, mh;
      std::memcpy(&dh, row + b * 84 + 80, 2);
      std::memcpy(&mh, row + b * 84 + 82, 2);
      dd = fp16_to_f32(dh);
      dmin = fp16_to_f32(mh);
    }
    double wsum = 0, msum = 0;
    for (int e = 0; e < 256; ++e) {
      const int64_t i = b * 256 + e;
      double wm = std::fabs(static_cast<double>(w[i]));
      if (s.type == GgmlType::Q2_K) {
        const uint8_t* blk = row + b * 84;
        const int hh = e / 128, j = (e % 128) / 32, l = e % 32;
        const uint8_t sc = blk[8 * hh + 2 * j + (l >= 16)];
        const int q = (blk[16 + 32 * hh + l] >> (2 * j)) & 3;
        wm = std::fabs(dd * (sc & 15) * q) + std::fabs(dmin * (sc >> 4));
      }
      t.dot += static_cast<double>(w[i]) * x[i];
      t.mag += wm * std::fabs(static_cast<double>(x[i]));
      wsum += wm;
    }
    if (s.type == GgmlType::Q2_K) {
      for (int G = 0; G < 16; ++G) msum += row[b * 84 + G] >> 4;
      t.minerr += std::fabs(dmin) * sb * 16384.0 * msum;  // 2^(E - 16) = s_b 2^14
    }
    t.qerr += wsum * sb / 2;
  }
  return t;
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

double swiglu_ref(double g, double u, double limit) {
  g = std::min(g, limit);
  u = std::min(std::max(u, -limit), limit);
  return silu(g) * u;
}

// Bound on |gpu - exact| of one gate+up output from the bounds tg, tu on g and u.
double swiglu_bound(double g, double u, double tg, double tu, double limit, double weight) {
  const double gc = std::min(g, limit), uc = std::min(std::max(u, -limit), limit);
  const double y = silu(gc) * uc * weight;
  return weight * (1.1 * tg * std::fabs(uc) + std::fabs(silu(gc)) * tu + 1.1 * tg * tu) + 16 * kUnit * std::fabs(y) +
         1e-30;
}

// A grouped routing: assignments sorted by expert.
struct Routing {
  int n_tokens = 0;
  std::vector<int32_t> offsets;  // [experts + 1]
  std::vector<int32_t> x_rows;   // token of each assignment
  std::vector<float> scale;      // routing weight of each assignment
  int total() const { return offsets.back(); }
  int group_of(int a) const {
    return static_cast<int>(std::upper_bound(offsets.begin(), offsets.end(), a) - offsets.begin()) - 1;
  }
};

Routing routing_from_sizes(const std::vector<int>& sizes, int pool, std::mt19937& rng) {
  Routing r;
  r.n_tokens = pool;
  r.offsets.push_back(0);
  for (int s : sizes) r.offsets.push_back(r.offsets.back() + s);
  std::uniform_int_distribution<int> pick(0, pool - 1);
  for (int a = 0; a < r.total(); ++a) r.x_rows.push_back(pick(rng));
  r.scale = random_floats(std::max(r.total(), 1), rng, 0.1f, 1.0f);
  return r;
}

// n_tokens tokens, each with `k` distinct experts: drawn from a skewed popularity (expert
// e weighs 1 / (1 + rank)^0.9 over a shuffled rank; `empty` experts never chosen), or
// with expert `always` in every token (one huge group) when it is >= 0.
Routing routing_tokens(int n_tokens, int k, int experts, int empty, int always, std::mt19937& rng) {
  std::vector<int> rank(experts);
  std::iota(rank.begin(), rank.end(), 0);
  std::shuffle(rank.begin(), rank.end(), rng);
  std::vector<double> weight(experts);
  for (int e = 0; e < experts; ++e) weight[e] = rank[e] < empty ? 0.0 : 1.0 / std::pow(1.0 + rank[e], 0.9);
  if (always >= 0) weight[always] = 0.0;
  std::discrete_distribution<int> pick(weight.begin(), weight.end());
  std::vector<std::vector<std::pair<int, float>>> by_expert(experts);
  std::uniform_real_distribution<float> w(0.05f, 1.0f);
  for (int t = 0; t < n_tokens; ++t) {
    std::vector<int> chosen;
    if (always >= 0) chosen.push_back(always);
    while (static_cast<int>(chosen.size()) < k) {
      const int e = pick(rng);
      if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
    }
    for (int e : chosen) by_expert[e].push_back({t, w(rng)});
  }
  Routing r;
  r.n_tokens = n_tokens;
  r.offsets.push_back(0);
  for (int e = 0; e < experts; ++e) {
    for (auto [t, s] : by_expert[e]) {
      r.x_rows.push_back(t);
      r.scale.push_back(s);
    }
    r.offsets.push_back(static_cast<int32_t>(r.x_rows.size()));
  }
  return r;
}

std::string routing_summary(const Routing& r) {
  int empty = 0, largest = 0, smallest = 1 << 30;
  for (size_t g = 0; g + 1 < r.offsets.size(); ++g) {
    const int n = r.offsets[g + 1] - r.offsets[g];
    if (n == 0) {
      ++empty;
    } else {
      smallest = std::min(smallest, n);
    }
    largest = std::max(largest, n);
  }
  const bool all_empty = empty == static_cast<int>(r.offsets.size()) - 1;
  return std::to_string(r.offsets.size() - 1) + " groups, " + std::to_string(r.total()) + " assignments, " +
         std::to_string(empty) + " empty, smallest " + std::to_string(all_empty ? 0 : smallest) + ", largest " +
         std::to_string(largest);
}

// Activations: uniform in [-3, 3]; in every third row one 256-column block scaled by 1e-3
// (per-block scales differ within a row).
std::vector<float> make_x(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<float> x = random_floats(static_cast<size_t>(rows * cols), rng, -3.0f, 3.0f);
  for (int64_t r = 0; r < rows; r += 3) {
    const int64_t b = (r / 3) % (cols / 256);
    for (int64_t i = 0; i < 256; ++i) x[r * cols + b * 256 + i] *= 1e-3f;
  }
  return x;
}

void* workspace(size_t bytes) {
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

struct Case {
  std::string name;
  Stack* w = nullptr;
  Stack* up = nullptr;  // paired when set
  const Routing* routing = nullptr;
  const std::vector<float>* x = nullptr;  // paired: token rows; down: assignment rows
  float limit = INFINITY;
  bool accumulate = false;
};

// Runs the launch into y (filled with NaN first, or with y0 when accumulating).
Status run_new(const Case& c, float* y, const float* dx, const int32_t* doff, const int32_t* drows,
               const float* dscale, const ExpertMatmulOptions& options = {}) {
  const bool paired = c.up != nullptr;
  ExpertMatmulLaunch l;
  l.w = &c.w->dev->m;
  l.w_up = paired ? &c.up->dev->m : nullptr;
  l.x = dx;
  l.x_stride = c.w->cols;
  l.y = y;
  l.y_stride = c.w->rows;
  l.n_tokens = c.routing->total() + 5;  // an upper bound, as the prefill passes
  l.swiglu_limit = c.limit;
  l.accumulate = c.accumulate;
  l.group_offsets = doff;
  l.n_groups = static_cast<int>(c.routing->offsets.size()) - 1;
  l.x_rows = paired ? drows : nullptr;
  l.row_scale = paired ? dscale : nullptr;
  l.x_pool_rows = paired ? c.routing->n_tokens : l.n_tokens;
  l.workspace = workspace(expert_matmul_workspace_bytes(c.w->cols, l.x_pool_rows));
  if (!l.workspace) return Status::Error("workspace allocation failed");
  return launch_expert_matmul(l, nullptr, options);
}

// The tuning variants (cuda/expert_matmul.h) other than the default; with `usable`, only
// those the device holds for this launch's kind (paired or not).
std::vector<ExpertMatmulOptions> other_variants() {
  std::vector<ExpertMatmulOptions> out;
  const ExpertMatmulOptions def;
  for (int bm : {128, 256}) {
    for (bool lane : {false, true}) {
      for (bool one : {false, true}) {
        if (bm == 256 && one) continue;  // one register budget at 256 rows
        for (int stages : {2, 3, 4}) {
          ExpertMatmulOptions o;
          o.rows_per_block = bm;
          o.lane_tables = lane;
          o.one_block_per_sm = one;
          o.stages = stages;
          if (o.rows_per_block == def.rows_per_block && o.lane_tables == def.lane_tables &&
              o.one_block_per_sm == def.one_block_per_sm && o.stages == def.stages) {
            continue;
          }
          out.push_back(o);
        }
      }
    }
  }
  for (int stages : {2, 3, 4}) {
    ExpertMatmulOptions o;
    o.small_tiles = true;
    o.lane_tables = false;  // does not apply
    o.stages = stages;
    out.push_back(o);
  }
  // The scaled-digit form (gate+up only), with the prefill's settings of the fields it
  // ignores (small tiles, 2 stages).
  // Shapes: 128 rows with one or two mma tiles per warp (two: one or two blocks per SM),
  // 256 rows, small tiles.
  for (int shape = 0; shape < 5; ++shape) {
    for (bool lane : {false, true}) {
      if (shape == 4 && lane) continue;  // small tiles: compact table only
      for (int stages : {2, 3, 4}) {
        ExpertMatmulOptions o;
        o.small_tiles = true;
        o.stages = 2;
        o.scaled_digits = true;
        o.scaled_rows_per_block = shape == 3 ? 256 : 128;
        o.scaled_warp_tiles = shape == 0 ? 1 : 2;
        o.scaled_one_block_per_sm = shape != 2;
        o.scaled_small_tiles = shape == 4;
        o.scaled_lane_tables = lane;
        o.scaled_stages = stages;
        out.push_back(o);
      }
    }
  }
  return out;
}

// The options the prefill (cuda/prefill.cu) passes today: gate+up on the small tiles with
// two stages, down on the defaults.
ExpertMatmulOptions prefill_options(bool paired) {
  ExpertMatmulOptions o;
  if (paired) {
    o.small_tiles = true;
    o.stages = 2;
  }
  return o;
}

// Whether variant `o` runs a kernel of its own for this kind of launch (the scaled-digit
// form and the lane tables are gate+up's).
bool applies(const ExpertMatmulOptions& o, bool paired) { return paired || (!o.lane_tables && !o.scaled_digits); }

std::string variant_name(const ExpertMatmulOptions& o) {
  if (o.scaled_digits) {
    if (o.scaled_small_tiles) return "scaled digits, small tiles (128 x 16), " + std::to_string(o.scaled_stages) + " stages";
    std::string shape;
    if (o.scaled_rows_per_block == 256) {
      shape = "256 x 32, 16 warps x 32 rows";
    } else if (o.scaled_warp_tiles == 1) {
      shape = "128 x 32, 16 warps x 16 rows";
    } else {
      shape = std::string("128 x 32, 8 warps x 32 rows, ") + (o.scaled_one_block_per_sm ? "1" : "2") + " blocks/SM";
    }
    return "scaled digits, " + shape + (o.scaled_lane_tables ? ", lane tables" : ", compact table") + ", " +
           std::to_string(o.scaled_stages) + " stages";
  }
  if (o.small_tiles) return "small tiles (128 rows x 16), " + std::to_string(o.stages) + " stages";
  return std::to_string(o.rows_per_block) + " rows, " + (o.lane_tables ? "lane tables" : "compact table") +
         (o.one_block_per_sm ? ", one block/SM" : "") + ", " + std::to_string(o.stages) + " stages";
}

// Whether a launch was refused for the device's shared memory (variants that do not fit).
bool refused_for_shared_memory(const Status& s) {
  return !s.ok() && s.message().find("shared memory") != std::string::npos;
}

Status run_exact(const Case& c, float* y, const float* dx, const int32_t* doff, const int32_t* drows,
                 const float* dscale, bool* ran) {
  const bool paired = c.up != nullptr;
  MatmulLaunch l;
  l.w = &c.w->dev->m;
  l.w_up = paired ? &c.up->dev->m : nullptr;
  l.x = dx;
  l.x_stride = c.w->cols;
  l.y = y;
  l.y_stride = c.w->rows;
  l.n_tokens = c.routing->total() + 5;
  l.swiglu_limit = c.limit;
  l.accumulate = c.accumulate;
  l.group_offsets = doff;
  l.n_groups = static_cast<int>(c.routing->offsets.size()) - 1;
  l.x_rows = paired ? drows : nullptr;
  l.row_scale = paired ? dscale : nullptr;
  l.precision = MatmulPrecision::kExact;
  if (!matmul_fits(l)) l.token_tile = 32;
  *ran = matmul_fits(l);
  if (!*ran) return Status::Ok();
  return launch_matmul(l, nullptr);
}

// Which assignments the CPU checks: all (sample <= 0) or up to `sample` spread over the
// groups (the largest group's first and last, single-assignment groups, and evenly
// spaced others).
std::vector<int> cpu_sample(const Routing& r, int sample) {
  std::vector<int> out;
  if (sample <= 0 || r.total() <= sample) {
    out.resize(r.total());
    std::iota(out.begin(), out.end(), 0);
    return out;
  }
  int largest = 0;
  for (size_t g = 0; g + 1 < r.offsets.size(); ++g) {
    if (r.offsets[g + 1] - r.offsets[g] > r.offsets[largest + 1] - r.offsets[largest]) largest = static_cast<int>(g);
  }
  out.push_back(r.offsets[largest]);
  out.push_back(r.offsets[largest + 1] - 1);
  for (size_t g = 0; g + 1 < r.offsets.size() && static_cast<int>(out.size()) < sample / 4; ++g) {
    if (r.offsets[g + 1] - r.offsets[g] == 1) out.push_back(r.offsets[g]);
  }
  const int rest = sample - static_cast<int>(out.size());
  for (int i = 0; i < rest; ++i) out.push_back(static_cast<int>((static_cast<int64_t>(i) * 7919 + 13) % r.total()));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// The full check of one case.
void test_case(const Case& c, int cpu_assignments, std::mt19937& rng) {
  const Routing& r = *c.routing;
  const bool paired = c.up != nullptr;
  const int total = r.total();
  const int64_t rows = c.w->rows, cols = c.w->cols;
  const std::string name = c.name + " (" + routing_summary(r) + ")";
  DeviceVec<float> dx(*c.x), dscale(r.scale);
  DeviceVec<int32_t> doff(r.offsets), drows(r.x_rows.empty() ? std::vector<int32_t>{0} : r.x_rows);
  const size_t n_out = static_cast<size_t>(rows) * (total + 1);  // one row past the assignments
  std::vector<float> y0;
  if (c.accumulate) y0 = random_floats(n_out, rng, -1.0f, 1.0f);
  DeviceVec<float> dy(n_out), dy2(n_out), dex(n_out);
  const auto fill = [&](float* p) {
    if (c.accumulate) {
      cudaMemcpy(p, y0.data(), sizeof(float) * n_out, cudaMemcpyHostToDevice);
    } else {
      cudaMemset(p, 0xFF, sizeof(float) * n_out);  // NaN
    }
  };
  fill(dy.get());
  // A sentinel in the row past the assignments.
  std::vector<float> sentinel(rows, 12345.0f);
  cudaMemcpy(dy.get() + static_cast<size_t>(total) * rows, sentinel.data(), sizeof(float) * rows,
             cudaMemcpyHostToDevice);
  Status s = run_new(c, dy.get(), dx.get(), doff.get(), drows.get(), dscale.get());
  check(s.ok(), name + ": launch: " + s.message());
  cudaError_t e = cudaDeviceSynchronize();
  check(e == cudaSuccess, name + ": kernel failed: " + cudaGetErrorString(e));
  if (!s.ok() || e != cudaSuccess) return;
  const std::vector<float> y = dy.host();

  // Every output written and finite; the row past the assignments untouched.
  int unwritten = 0;
  for (size_t i = 0; i < static_cast<size_t>(total) * rows; ++i) {
    if (!std::isfinite(y[i]) && unwritten++ < 5) {
      std::printf("  %s: assignment %zu row %zu is %g (not written?)\n", name.c_str(), i / rows, i % rows, y[i]);
    }
  }
  check(unwritten == 0, name + ": " + std::to_string(unwritten) + " outputs not finite");
  int past = 0;
  for (int64_t i = 0; i < rows; ++i) past += y[static_cast<size_t>(total) * rows + i] != 12345.0f;
  check(past == 0, name + ": " + std::to_string(past) + " values written in the row past the assignments");

  // Repeat: the same bits.
  fill(dy2.get());
  cudaMemcpy(dy2.get() + static_cast<size_t>(total) * rows, sentinel.data(), sizeof(float) * rows,
             cudaMemcpyHostToDevice);
  s = run_new(c, dy2.get(), dx.get(), doff.get(), drows.get(), dscale.get());
  e = cudaDeviceSynchronize();
  check(s.ok() && e == cudaSuccess, name + ": repeated launch failed: " + s.message());
  if (s.ok() && e == cudaSuccess) {
    const std::vector<float> y2 = dy2.host();
    int differ = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      if (std::memcmp(&y[i], &y2[i], 4) != 0 && differ++ < 3) {
        std::printf("  %s: repeat differs at assignment %zu row %zu: %.9g then %.9g\n", name.c_str(), i / rows,
                    i % rows, y[i], y2[i]);
      }
    }
    check(differ == 0, name + ": repeated launch differs in " + std::to_string(differ) + " outputs");
  }
  // The tuning variants: the same bits (down: lane tables do not apply, the same kernel).
  for (const ExpertMatmulOptions& o : other_variants()) {
    if (!applies(o, paired)) continue;
    fill(dy2.get());
    cudaMemcpy(dy2.get() + static_cast<size_t>(total) * rows, sentinel.data(), sizeof(float) * rows,
               cudaMemcpyHostToDevice);
    s = run_new(c, dy2.get(), dx.get(), doff.get(), drows.get(), dscale.get(), o);
    e = cudaDeviceSynchronize();
    if (refused_for_shared_memory(s)) {
      std::printf("  %s: variant %s refused on this device (%s)\n", name.c_str(), variant_name(o).c_str(),
                  s.message().c_str());
      continue;
    }
    check(s.ok() && e == cudaSuccess, name + ": variant " + variant_name(o) + " failed: " + s.message());
    if (!s.ok() || e != cudaSuccess) continue;
    const std::vector<float> y2 = dy2.host();
    int differ = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      if (std::memcmp(&y[i], &y2[i], 4) != 0 && differ++ < 3) {
        std::printf("  %s: variant %s differs at assignment %zu row %zu: %.9g, default %.9g\n", name.c_str(),
                    variant_name(o).c_str(), i / rows, i % rows, y2[i], y[i]);
      }
    }
    check(differ == 0, name + ": variant " + variant_name(o) + " differs from the default in " +
                           std::to_string(differ) + " outputs");
  }

  // Against the CPU (sampled assignments at the real shapes, all rows).
  const std::vector<int> sample = cpu_sample(r, cpu_assignments);
  int bad = 0;
  double worst = 0;
  for (int a : sample) {
    const int g = r.group_of(a);
    const float* xa = c.x->data() + static_cast<size_t>(paired ? r.x_rows[a] : a) * cols;
    for (int64_t row = 0; row < rows; ++row) {
      const Terms tw = row_terms(*c.w, g, row, xa);
      double want, bound;
      if (paired) {
        const Terms tu = row_terms(*c.up, g, row, xa);
        want = swiglu_ref(tw.dot, tu.dot, c.limit) * r.scale[a];
        bound = swiglu_bound(tw.dot, tu.dot, tw.bound(cols), tu.bound(cols), c.limit, r.scale[a]);
      } else {
        const double base = c.accumulate ? y0[static_cast<size_t>(a) * rows + row] : 0.0;
        want = base + tw.dot;
        bound = tw.bound(cols) + 2 * kUnit * (std::fabs(base) + std::fabs(want)) + 1e-30;
      }
      const double got = y[static_cast<size_t>(a) * rows + row];
      const double err = std::fabs(got - want);
      if (!(err <= bound)) {
        if (bad++ < 5) {
          std::printf("  %s: assignment %d (group %d, x row %d) row %lld: got %.9g expected %.9g (|d| %.3g > "
                      "bound %.3g)\n",
                      name.c_str(), a, g, paired ? r.x_rows[a] : a, static_cast<long long>(row), got, want, err, bound);
        }
      } else {
        worst = std::max(worst, err / bound);
      }
    }
  }
  check(bad == 0, name + ": " + std::to_string(bad) + " of " + std::to_string(sample.size() * rows) +
                      " checked outputs outside the bound against the CPU");
  std::printf("%s %s: CPU on %zu assignments x %lld rows: max |d|/bound %.3f\n", bad ? "FAIL" : "ok  ", name.c_str(),
              sample.size(), static_cast<long long>(rows), worst);

  // Against kExact, every output: |d| within 2e-4 of the assignment row's rms (the two
  // bounds are about 1e-4 of it; typical differences are far below).
  fill(dex.get());
  bool ran = false;
  s = run_exact(c, dex.get(), dx.get(), doff.get(), drows.get(), dscale.get(), &ran);
  e = cudaDeviceSynchronize();
  check(s.ok() && e == cudaSuccess, name + ": kExact launch failed: " + s.message());
  if (!ran) {
    std::printf("  %s: kExact does not fit this device's shared memory: comparison skipped\n", name.c_str());
    return;
  }
  if (!s.ok() || e != cudaSuccess) return;
  const std::vector<float> ex = dex.host();
  double max_abs = 0, max_rel = 0;
  int far = 0;
  for (int a = 0; a < total; ++a) {
    double ss = 0;
    for (int64_t row = 0; row < rows; ++row) ss += static_cast<double>(ex[a * rows + row]) * ex[a * rows + row];
    const double rms = std::sqrt(ss / rows);
    for (int64_t row = 0; row < rows; ++row) {
      const double d = std::fabs(static_cast<double>(y[a * rows + row]) - ex[a * rows + row]);
      max_abs = std::max(max_abs, d);
      if (rms > 0) max_rel = std::max(max_rel, d / rms);
      if (!(d <= 2e-4 * rms + 1e-30) && far++ < 5) {
        std::printf("  %s: assignment %d row %lld: %.9g, kExact %.9g (row rms %.3g)\n", name.c_str(), a,
                    static_cast<long long>(row), y[a * rows + row], ex[a * rows + row], rms);
      }
    }
  }
  check(far == 0, name + ": " + std::to_string(far) + " outputs differ from kExact by more than 2e-4 of the row rms");
  std::printf("%s %s: against kExact (all %lld outputs): max |d| %.3g, max |d|/row rms %.3g\n", far ? "FAIL" : "ok  ",
              name.c_str(), static_cast<long long>(total) * rows, max_abs, max_rel);
}

// The integer sums at their largest: IQ2_XXS weights of the grid entries with the most
// 43s, every 32-column scale S = 15 (2S + 1 = 31), and activations whose digits are at
// their extremes (127 or -128 in the low three), so that the
// digit-scale sums and the scaled-digit sums reach their bounds; every variant must agree
// with the default bit for bit (test_case), and the CPU within the bound.
void test_extreme_sums(std::mt19937& rng) {
  constexpr int64_t kCols = 512, kRows = 128, kCount = 4;
  std::vector<int> heavy;  // grid entries with the most 43s
  int most = 0;
  for (int gi = 0; gi < 256; ++gi) {
    int n43 = 0;
    for (int i = 0; i < 8; ++i) n43 += ((kIq2xxsGrid[gi] >> (8 * i)) & 0xFF) == 43;
    if (n43 > most) {
      most = n43;
      heavy.clear();
    }
    if (n43 == most) heavy.push_back(gi);
  }
  std::printf("extreme sums: %zu grid entries with %d of 8 elements 43\n", heavy.size(), most);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(heavy.size()) - 1), sign(0, 127), coin(0, 1);
  const auto make_stack = [&](const std::string& name) -> std::unique_ptr<Stack> {
    const size_t row_bytes = ggml_row_bytes(GgmlType::IQ2_XXS, kCols);
    std::vector<uint8_t> bytes(row_bytes * kRows * kCount);
    for (int64_t r = 0; r < kRows * kCount; ++r) {
      for (int64_t b = 0; b < kCols / 256; ++b) {
        uint8_t* blk = bytes.data() + r * row_bytes + b * 66;
        const uint16_t d = f32_to_fp16(coin(rng) ? 0.01f : -0.02f);
        std::memcpy(blk, &d, 2);
        for (int c = 0; c < 8; ++c) {
          uint32_t grid = 0, signs = 15u << 28;
          for (int k = 0; k < 4; ++k) {
            grid |= static_cast<uint32_t>(heavy[pick(rng)]) << (8 * k);
            // all positive, all "negative" (index 127), or random signs
            const int sk = r % 3 == 0 ? 0 : r % 3 == 1 ? 127 : sign(rng);
            signs |= static_cast<uint32_t>(sk) << (7 * k);
          }
          std::memcpy(blk + 2 + 8 * c, &grid, 4);
          std::memcpy(blk + 6 + 8 * c, &signs, 4);
        }
      }
    }
    auto st = std::make_unique<Stack>();
    st->type = GgmlType::IQ2_XXS;
    st->cols = kCols;
    st->rows = kRows;
    st->count = kCount;
    auto dm = upload_matrix(GgmlType::IQ2_XXS, kCols, kRows, kCount, bytes.data());
    check(dm.ok(), name + ": upload: " + (dm.ok() ? std::string() : dm.status().message()));
    if (!dm.ok()) return nullptr;
    st->dev = std::move(*dm);
    return st;
  };
  auto gate = make_stack("extreme gate");
  auto up = make_stack("extreme up");
  if (!gate || !up) return;
  const Routing r = routing_from_sizes({5, 40, 0, 17}, 24, rng);
  // x = a 2^(E - 30) with E = 1 (max |x| in [1, 2); half the values at least 2^29): a of
  // at most 24 significant bits (exact in f32) with digits at their extremes: (0, 127,
  // 127, 63), (0, -128, -127, 64), (127, 127, 127, 0), (-128, -127, -127, 1).
  const int32_t extremes[4] = {0x3F7F7F00, 0x3F808000, 0x007F7F7F, 0x00808080};
  std::vector<float> x(static_cast<size_t>(r.n_tokens) * kCols);
  for (float& v : x) {
    const int32_t a = extremes[coin(rng) * 2 + coin(rng)];
    v = std::ldexp(static_cast<float>(coin(rng) ? a : -a), -29);
  }
  for (float limit : {INFINITY, 10.0f}) {
    test_case({"extreme sums gate+up limit " + std::to_string(limit), gate.get(), up.get(), &r, &x, limit, false}, 0,
              rng);
  }
}

// A non-finite value in one 256-column block of one x row: exactly the outputs that read
// that row become NaN (down) or not finite (gate+up without a limit: the SwiGLU of NaN),
// every row of them; the others stay finite.
void test_non_finite(Stack* gate, Stack* up, Stack* down, std::mt19937& rng) {
  const Routing r = routing_from_sizes({3, 0, 5, 1, 0, 2, 4, 1}, 6, rng);
  for (bool paired : {true, false}) {
    const std::string name = std::string("non-finite x ") + (paired ? "gate+up" : "down");
    Stack* w = paired ? gate : down;
    const int64_t cols = w->cols, rows = w->rows;
    const int pool = paired ? r.n_tokens : r.total();
    std::vector<float> x = make_x(pool, cols, rng);
    const int bad_row = paired ? r.x_rows[4] : 4;
    x[static_cast<size_t>(bad_row) * cols + 7] = INFINITY;
    Case c;
    c.name = name;
    c.w = w;
    c.up = paired ? up : nullptr;
    c.routing = &r;
    c.x = &x;
    DeviceVec<float> dx(x), dscale(r.scale), dy(static_cast<size_t>(rows) * r.total());
    DeviceVec<int32_t> doff(r.offsets), drows(r.x_rows);
    Status s = run_new(c, dy.get(), dx.get(), doff.get(), drows.get(), dscale.get());
    check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, name + ": launch: " + s.message());
    const std::vector<float> y = dy.host();
    int wrong = 0;
    for (int a = 0; a < r.total(); ++a) {
      const bool reads = (paired ? r.x_rows[a] : a) == bad_row;
      for (int64_t row = 0; row < rows; ++row) {
        const float v = y[static_cast<size_t>(a) * rows + row];
        // down: NaN; gate+up (no limit): the SwiGLU of NaN products, not finite.
        const bool flagged = paired ? !std::isfinite(v) : std::isnan(v);
        if (reads != flagged && wrong++ < 3) {
          std::printf("  %s: assignment %d row %lld is %g (%s x row %d)\n", name.c_str(), a,
                      static_cast<long long>(row), v, reads ? "reads" : "does not read", bad_row);
        }
      }
    }
    check(wrong == 0,
          name + ": " + std::to_string(wrong) + " outputs flagged where they should not be, or not flagged");
  }
}

// Launches the kernels refuse, each with a message.
void test_refused(Stack* gate, Stack* up, Stack* down) {
  DeviceVec<float> dx(4096), dy(4096);
  DeviceVec<int32_t> doff(std::vector<int32_t>{0, 1});
  const auto base = [&](bool paired) {
    ExpertMatmulLaunch l;
    l.w = paired ? &gate->dev->m : &down->dev->m;
    l.w_up = paired ? &up->dev->m : nullptr;
    l.x = dx.get();
    l.x_stride = l.w->cols;
    l.y = dy.get();
    l.y_stride = l.w->rows;
    l.n_tokens = 1;
    l.group_offsets = doff.get();
    l.n_groups = 1;
    l.x_pool_rows = 1;
    l.workspace = workspace(expert_matmul_workspace_bytes(l.w->cols, 1));
    return l;
  };
  check(expert_matmul_supported(base(true)).ok(), "refused: the base gate+up launch is supported");
  check(expert_matmul_supported(base(false)).ok(), "refused: the base down launch is supported");
  const auto refused = [&](const ExpertMatmulLaunch& l, const std::string& what) {
    const Status s = launch_expert_matmul(l, nullptr);
    check(!s.ok() && !s.message().empty(), "refused: " + what + " (got: " + (s.ok() ? "ok" : s.message()) + ")");
    if (!s.ok()) std::printf("refused as expected: %s: %s\n", what.c_str(), s.message().c_str());
  };
  DeviceMatrix odd = down->dev->m;
  odd.type = GgmlType::Q8_0;
  ExpertMatmulLaunch l = base(false);
  l.w = &odd;
  refused(l, "Q8_0 weights");
  DeviceMatrix narrow = down->dev->m;
  narrow.cols = 200;
  l = base(false);
  l.w = &narrow;
  refused(l, "200 columns");
  DeviceMatrix short_rows = down->dev->m;
  short_rows.rows = 96;
  l = base(false);
  l.w = &short_rows;
  refused(l, "96 down rows");
  l = base(true);
  l.w_up = &down->dev->m;
  refused(l, "Q2_K up matrix");
  l = base(false);
  l.group_offsets = nullptr;
  refused(l, "no group offsets");
  l = base(false);
  l.n_groups = static_cast<int>(down->count) + 1;
  refused(l, "more groups than matrices");
  l = base(false);
  l.workspace = nullptr;
  refused(l, "no workspace");
  l = base(false);
  l.x = dx.get() + 1;
  refused(l, "x not 16-byte aligned");
  l = base(true);
  l.x_rows = nullptr;
  l.x_pool_rows = 0;
  refused(l, "pool rows below n_tokens without x_rows");
  ExpertMatmulOptions five;
  five.stages = 5;
  const Status s5 = launch_expert_matmul(base(false), nullptr, five);
  check(!s5.ok(), "refused: 5 pipeline stages (got: " + (s5.ok() ? std::string("ok") : s5.message()) + ")");
  if (!s5.ok()) std::printf("refused as expected: 5 stages: %s\n", s5.message().c_str());
  ExpertMatmulOptions rows64;
  rows64.rows_per_block = 64;
  const Status s64 = launch_expert_matmul(base(false), nullptr, rows64);
  check(!s64.ok(), "refused: 64 rows per block (got: " + (s64.ok() ? std::string("ok") : s64.message()) + ")");
  if (!s64.ok()) std::printf("refused as expected: 64 rows per block: %s\n", s64.message().c_str());
  ExpertMatmulOptions scaled5;
  scaled5.scaled_digits = true;
  scaled5.scaled_stages = 5;
  const Status ss5 = launch_expert_matmul(base(true), nullptr, scaled5);
  check(!ss5.ok(), "refused: 5 scaled-digit stages (got: " + (ss5.ok() ? std::string("ok") : ss5.message()) + ")");
  if (!ss5.ok()) std::printf("refused as expected: 5 scaled-digit stages: %s\n", ss5.message().c_str());
}

// The tensor cores' own rate for the products above, with operands in registers (no
// memory): mma.sync m16n8k32 s8 (what these kernels issue, four per 32 columns and 8
// assignments) and m16n8k16 f16 (kExact's), eight independent accumulators per warp.
// Sums are written out so that the work is not removed. The ceiling of the integer
// kernels' effective rate is the s8 rate / 4 (four digits).
__global__ void mma_s8_peak_kernel(int iters, int* out) {
  int acc[8][4] = {};
  const uint32_t a = 0x01020304u + threadIdx.x, b = 0x05060708u ^ threadIdx.x;
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      asm volatile(
          "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
          : "+r"(acc[k][0]), "+r"(acc[k][1]), "+r"(acc[k][2]), "+r"(acc[k][3])
          : "r"(a), "r"(a + k), "r"(b), "r"(b + k), "r"(a ^ b), "r"(b));
    }
  }
  int sum = 0;
  for (int k = 0; k < 8; ++k) sum += acc[k][0] + acc[k][1] + acc[k][2] + acc[k][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

__global__ void mma_f16_peak_kernel(int iters, float* out) {
  float acc[8][4] = {};
  const uint32_t a = 0x3c003c00u, b = 0x38003800u;  // 1.0, 0.5 in f16
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
          : "+f"(acc[k][0]), "+f"(acc[k][1]), "+f"(acc[k][2]), "+f"(acc[k][3])
          : "r"(a), "r"(a), "r"(b), "r"(b), "r"(a), "r"(b));
    }
  }
  float sum = 0;
  for (int k = 0; k < 8; ++k) sum += acc[k][0] + acc[k][1] + acc[k][2] + acc[k][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

void bench_mma_peak() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int blocks = sms * 4, threads = 256, iters = 4096;
  DeviceVec<int> di(static_cast<size_t>(blocks) * threads);
  DeviceVec<float> df(static_cast<size_t>(blocks) * threads);
  const double us_s8 = time_us([&] { mma_s8_peak_kernel<<<blocks, threads>>>(iters, di.get()); }, 3);
  const double us_f16 = time_us([&] { mma_f16_peak_kernel<<<blocks, threads>>>(iters, df.get()); }, 3);
  check(cudaDeviceSynchronize() == cudaSuccess, "mma peak kernels");
  const double mmas = static_cast<double>(blocks) * (threads / 32) * iters * 8;
  const double s8_tops = mmas * 2 * 16 * 8 * 32 / us_s8 * 1e-6;
  const double f16_tflops = mmas * 2 * 16 * 8 * 16 / us_f16 * 1e-6;
  std::printf("bench tensor-core rate, operands in registers: mma.sync s8 m16n8k32 %.0f TOPS (four digits: %.0f TOPS "
              "effective at most); f16 m16n8k16 %.0f TFLOP/s (kExact's two per 16 columns: %.0f effective at most); "
              "%.1f / %.1f us\n",
              s8_tops, s8_tops / 4, f16_tflops, f16_tflops / 2, us_s8, us_f16);
}

// One benchmark: us per launch (digit split included) of every variant, printed as one
// table with effective TOPS and the ratio to what the prefill runs today
// (prefill_options) and to the options' defaults; then kExact.
void bench(const Case& c) {
  const Routing& r = *c.routing;
  const bool paired = c.up != nullptr;
  DeviceVec<float> dx(*c.x), dscale(r.scale), dy(static_cast<size_t>(c.w->rows) * r.total());
  DeviceVec<int32_t> doff(r.offsets), drows(r.x_rows);
  const double ops = 2.0 * c.w->rows * c.w->cols * r.total() * (paired ? 2 : 1);
  const auto measure = [&](const ExpertMatmulOptions& o, Status* status) {
    return time_us([&] { *status = run_new(c, dy.get(), dx.get(), doff.get(), drows.get(), dscale.get(), o); }, 10);
  };
  struct Row {
    std::string name;
    double us;
  };
  std::vector<Row> rows;
  Status s;
  const double us_default = measure(ExpertMatmulOptions{}, &s);
  check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, "bench " + c.name + ": " + s.message());
  const double us_today = measure(prefill_options(paired), &s);
  check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, "bench " + c.name + " (prefill's options): " + s.message());
  rows.push_back({"defaults (" + variant_name(ExpertMatmulOptions{}) + ")", us_default});
  rows.push_back({"the prefill's today (" + variant_name(prefill_options(paired)) + ")", us_today});
  for (const ExpertMatmulOptions& o : other_variants()) {
    if (!applies(o, paired)) continue;
    Status sv;
    const double us = measure(o, &sv);
    cudaDeviceSynchronize();
    if (!sv.ok()) {
      std::printf("bench %s variant %s: not run (%s)\n", c.name.c_str(), variant_name(o).c_str(), sv.message().c_str());
      continue;
    }
    rows.push_back({variant_name(o), us});
  }
  std::printf("bench table: %s (%s)\n", c.name.c_str(), routing_summary(r).c_str());
  std::printf("bench   %-62s %10s %8s %10s %10s\n", "variant", "us", "TOPS", "vs today", "vs default");
  for (const Row& row : rows) {
    std::printf("bench   %-62s %10.1f %8.1f %9.2fx %9.2fx\n", row.name.c_str(), row.us, ops / row.us * 1e-6,
                us_today / row.us, us_default / row.us);
  }
  bool ran = false;
  const double us_exact =
      time_us([&] { s = run_exact(c, dy.get(), dx.get(), doff.get(), drows.get(), dscale.get(), &ran); }, 10);
  check(s.ok() && cudaDeviceSynchronize() == cudaSuccess, "bench kExact " + c.name + ": " + s.message());
  std::printf("bench %s (%s): integer tensor cores (defaults) %.1f us, %.1f TOPS; kExact %s%.1f us, %.1f TOPS; "
              "speed-up %.2f\n",
              c.name.c_str(), routing_summary(r).c_str(), us_default, ops / us_default * 1e-6, ran ? "" : "(not run) ",
              us_exact, ops / us_exact * 1e-6, us_exact / us_default);
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  Status init = expert_matmul_init();
  check(init.ok(), "expert_matmul_init: " + init.message());
  Status minit = matmul_init();
  check(minit.ok(), "matmul_init: " + minit.message());
  if (!init.ok()) return finish("expert_matmul_test");
  std::mt19937 rng(20261129);

  // Tiny fixtures' shapes: 8 experts, dim 256, expert_ffn 256.
  auto tg = host_stack(GgmlType::IQ2_XXS, 256, 256, 8, rng, "tiny gate");
  auto tu = host_stack(GgmlType::IQ2_XXS, 256, 256, 8, rng, "tiny up");
  auto td = host_stack(GgmlType::Q2_K, 256, 256, 8, rng, "tiny down");
  // Two-block columns (512) for the pipeline's second stage.
  auto wg = host_stack(GgmlType::IQ2_XXS, 512, 192, 5, rng, "small gate");
  auto wu = host_stack(GgmlType::IQ2_XXS, 512, 192, 5, rng, "small up");
  auto wd = host_stack(GgmlType::Q2_K, 768, 256, 5, rng, "small down");
  if (!tg || !tu || !td || !wg || !wu || !wd) return finish("expert_matmul_test");

  const std::vector<std::vector<int>> tiny_sizes = {
      {0, 1, 2, 0, 40, 3, 0, 1},  // empty groups, a group of one, one over two tiles
      {0, 0, 0, 0, 0, 0, 0, 5},   // one group, the last
      {1, 1, 1, 1, 1, 1, 1, 1},
      {0, 300, 0, 0, 2, 0, 0, 0},  // one huge group (ten tiles)
  };
  for (const auto& sizes : tiny_sizes) {
    const Routing r = routing_from_sizes(sizes, 7, rng);
    const std::vector<float> xt = make_x(r.n_tokens, 256, rng);
    const std::vector<float> xa = make_x(std::max(r.total(), 1), 256, rng);
    for (float limit : {INFINITY, 10.0f, 0.5f}) {
      test_case({"tiny gate+up limit " + std::to_string(limit), tg.get(), tu.get(), &r, &xt, limit, false}, 0, rng);
    }
    for (bool acc : {false, true}) {
      test_case({std::string("tiny down") + (acc ? " accumulate" : ""), td.get(), nullptr, &r, &xa, INFINITY, acc}, 0,
                rng);
    }
  }
  {
    const Routing r = routing_from_sizes({10, 0, 33, 70, 1}, 40, rng);
    const std::vector<float> xt = make_x(r.n_tokens, 512, rng);
    const std::vector<float> xa = make_x(r.total(), 768, rng);
    test_case({"small gate+up 192x512 limit 0.5", wg.get(), wu.get(), &r, &xt, 0.5f, false}, 0, rng);
    test_case({"small down 256x768", wd.get(), nullptr, &r, &xa, INFINITY, false}, 0, rng);
  }
  test_extreme_sums(rng);
  test_non_finite(tg.get(), tu.get(), td.get(), rng);
  test_refused(tg.get(), tu.get(), td.get());

  // The real shapes: 256 experts, 2048 tokens x 6 assignments.
  auto rg = device_stack(GgmlType::IQ2_XXS, 4096, 2048, 256, 101, "gate_exps");
  auto ru = device_stack(GgmlType::IQ2_XXS, 4096, 2048, 256, 102, "up_exps");
  auto rd = device_stack(GgmlType::Q2_K, 2048, 4096, 256, 103, "down_exps");
  if (!rg || !ru || !rd) return finish("expert_matmul_test");
  const Routing skewed = routing_tokens(2048, 6, 256, 12, -1, rng);
  const Routing huge = routing_tokens(2048, 6, 256, 0, 77, rng);
  const std::vector<float> x_tokens = make_x(2048, 4096, rng);
  std::vector<float> h_rows = make_x(skewed.total(), 2048, rng);
  for (auto& v : h_rows) v *= 0.3f;  // SwiGLU outputs: smaller than the layer input
  test_case({"real gate+up limit 10", rg.get(), ru.get(), &skewed, &x_tokens, 10.0f, false}, 24, rng);
  test_case({"real down", rd.get(), nullptr, &skewed, &h_rows, INFINITY, false}, 24, rng);
  test_case({"real gate+up, one expert in every token", rg.get(), ru.get(), &huge, &x_tokens, INFINITY, false}, 12,
            rng);
  test_case({"real down, one expert in every token", rd.get(), nullptr, &huge, &h_rows, INFINITY, false}, 12, rng);

  bench_mma_peak();
  bench({"gate+up 2x 2048x4096 IQ2_XXS", rg.get(), ru.get(), &skewed, &x_tokens, 10.0f, false});
  bench({"down 4096x2048 Q2_K", rd.get(), nullptr, &skewed, &h_rows, INFINITY, false});
  bench({"gate+up, one expert in every token", rg.get(), ru.get(), &huge, &x_tokens, 10.0f, false});
  bench({"down, one expert in every token", rd.get(), nullptr, &huge, &h_rows, INFINITY, false});
  return finish("expert_matmul_test");
}
