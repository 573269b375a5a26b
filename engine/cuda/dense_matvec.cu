#include "cuda/dense_matvec.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/dequant_chunk.cuh"
#include "cuda/device_math.cuh"
#include "cuda/kernel_residency.h"
#include "cuda/launch.h"

namespace ds4 {
namespace {
using cuda_detail::kReduceScatterShift;
using cuda_detail::swiglu;
using cuda_detail::warp_reduce_scatter;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

struct DenseParams {
  const uint8_t* w_data;
  const uint16_t* w_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;
  int64_t scales_per_row;
  int64_t first_row;        // fixed_matrix * w.rows: the stack row of slot 0, row 0
  int64_t slot_row_stride;
  int64_t n_rows;
  const float* x;
  int64_t x_slot_stride;
  float* y;
  int64_t y_slot_stride;
  int blocks_per_slot;
  int warp_shift;           // log2(warps per row): 0..3
  float swiglu_limit;
  int accumulate;
  const float* x_norm_weight;
  float x_norm_eps;
  int cols;
  int l2_lines;             // lines of the block's share asked into L2 before the wait
};


// One lane's 32 weights of a row within one 1024-column segment, read as 16-byte pieces
// that the warp's lanes take side by side (each load instruction of a warp covers 512
// contiguous bytes): piece p of lane L holds columns
//   segment * 1024 + p * (1024 / kPieces) + L * kPer + j,  j < kPer = 32 / kPieces,
// and the lane's x registers hold the same columns in the same order (column_of).
template <GgmlType T>
struct Slice;

template <>
struct Slice<GgmlType::Q8_0> {
  static constexpr int kPieces = 2;  // 16 quants each, from two 32-quant blocks
  struct Raw {
    int4 q[2];
    uint16_t d[2];
  };
  static __device__ __forceinline__ Raw load(const uint8_t* row, const uint16_t* scales, int segment, int lane) {
    Raw r;
#pragma unroll
    for (int p = 0; p < 2; ++p) r.q[p] = cuda_detail::load16(row + segment * 1024 + p * 512 + 16 * lane);
#pragma unroll
    for (int p = 0; p < 2; ++p) r.d[p] = __ldg(scales + segment * 32 + p * 16 + (lane >> 1));
    return r;
  }
  // sum over pieces of (sum_j q_j x_j, in column order) * d, piece order.
  static __device__ __forceinline__ float dot(const Raw& r, const float (&x)[32]) {
    float acc = 0.0f;
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int v[4] = {r.q[p].x, r.q[p].y, r.q[p].z, r.q[p].w};
      float d = 0.0f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t biased = static_cast<uint32_t>(v[i]) ^ 0x80808080u;  // int8 + 128
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float w = __int_as_float(__byte_perm(biased, 0x4B000000u, j | (4 << 4) | (5 << 8) | (7 << 12))) -
                          8388736.0f;  // 2^23 + 128: exact
          d = fmaf(w, x[16 * p + 4 * i + j], d);
        }
      }
      const float scale = cuda_detail::half_bits_to_float(r.d[p]);
      acc = p == 0 ? d * scale : fmaf(d, scale, acc);
    }
    return acc;
  }
};

template <>
struct Slice<GgmlType::F16> {
  static constexpr int kPieces = 4;  // 8 halves each
  struct Raw {
    int4 q[4];
  };
  static __device__ __forceinline__ Raw load(const uint8_t* row, const uint16_t*, int segment, int lane) {
    Raw r;
#pragma unroll
    for (int p = 0; p < 4; ++p) r.q[p] = cuda_detail::load16(row + segment * 2048 + p * 512 + 16 * lane);
    return r;
  }
  static __device__ __forceinline__ float dot(const Raw& r, const float (&x)[32]) {
    float d = 0.0f;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const __half2* h = reinterpret_cast<const __half2*>(&r.q[p]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(h[j]);
        d = fmaf(f.x, x[8 * p + 2 * j], d);
        d = fmaf(f.y, x[8 * p + 2 * j + 1], d);
      }
    }
    return d;
  }
};

// The column of x register k of lane `lane` in 1024-column segment `segment`.
template <GgmlType T>
__device__ __forceinline__ int column_of(int segment, int lane, int k) {
  constexpr int kPer = 32 / Slice<T>::kPieces;
  return segment * 1024 + (k / kPer) * (1024 / Slice<T>::kPieces) + lane * kPer + k % kPer;
}

// Registers a batch's raw weights take per lane (32-bit words); the blocks per
// multiprocessor the compiler must leave registers for (2: 128 a thread) where the batch
// fits there without spilling; and the variants built at all (the others spill even with
// 255 registers). Checked with ptxas -v for sm_90 and sm_121.
template <GgmlType T, int R, bool PREFETCH, bool PAIRED>
constexpr int kBatchWords = R * (T == GgmlType::Q8_0 ? 10 : 16) * (PAIRED ? 2 : 1) * (PREFETCH ? 2 : 1);
template <GgmlType T, int R, bool PREFETCH, bool PAIRED>
constexpr int kMinBlocks = kBatchWords<T, R, PREFETCH, PAIRED> <= 80 && R * (PAIRED ? 2 : 1) <= 4 ? 2 : 1;
template <GgmlType T, int R, bool PREFETCH, bool PAIRED>
constexpr bool kBuilt = !(PAIRED && R == 8) && !(T == GgmlType::F16 && PREFETCH && (R == 8 || (PAIRED && R == 4)));

// Block (blockIdx.x, slot blockIdx.y) owns rows [n_rows * x / blocks, n_rows * (x+1) / blocks)
// of its slot. Warp w belongs to row group w >> warp_shift and holds the lane's slice of
// 1024-column segment (w & (warps per row - 1)) of every row; group g takes rows
// begin + (b * R + i) * groups + g in batch b, i < R.
template <GgmlType T, int R, bool PREFETCH, bool PAIRED>
__global__ void __launch_bounds__(kThreads, (kMinBlocks<T, R, PREFETCH, PAIRED>)) dense_matvec_kernel(DenseParams p) {
  using C = Slice<T>;
  using Raw = typename C::Raw;
  constexpr bool kScaled = T == GgmlType::Q8_0;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int wpr = 1 << p.warp_shift;
  const int groups = kWarps >> p.warp_shift;
  const int group = warp >> p.warp_shift;
  const int wi = warp & (wpr - 1);
  const int segment = wi;
  const int slot = blockIdx.y;
  const int64_t begin = p.n_rows * blockIdx.x / p.blocks_per_slot;
  const int64_t end = p.n_rows * (blockIdx.x + 1) / p.blocks_per_slot;
  const int64_t rows_here = end - begin;
  const int64_t rows_per_batch = static_cast<int64_t>(R) * groups;
  const int batches = static_cast<int>((rows_here + rows_per_batch - 1) / rows_per_batch);
  const int64_t stack0 = p.first_row + slot * p.slot_row_stride;  // stack row of row 0

  const auto row_of = [&](int b, int i) { return begin + (static_cast<int64_t>(b) * R + i) * groups + group; };
  const auto load_batch = [&](int b, Raw (&raw)[R], Raw (&raw_up)[PAIRED ? R : 1]) {
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t r = row_of(b, i);
      raw[i] = Raw{};
      if constexpr (PAIRED) raw_up[i] = Raw{};
      if (r < end) {
        const int64_t s = stack0 + r;
        raw[i] = C::load(p.w_data + s * p.row_bytes, kScaled ? p.w_scales + s * p.scales_per_row : nullptr, segment,
                         lane);
        if constexpr (PAIRED) {
          raw_up[i] = C::load(p.u_data + s * p.row_bytes, kScaled ? p.u_scales + s * p.scales_per_row : nullptr,
                              segment, lane);
        }
      }
    }
  };

  // Before the dependency wait (programmatic dependent launch, cuda/launch.h): only
  // weights are read, which no kernel writes. The first batch goes to registers; the
  // rest of the block's share is asked into L2.
  Raw cur[R];
  Raw cur_up[PAIRED ? R : 1];
  if (batches > 0) load_batch(0, cur, cur_up);
  if (p.l2_lines > 0 && rows_here > rows_per_batch) {
    const int64_t s = stack0 + begin + rows_per_batch;
    const int64_t rows = rows_here - rows_per_batch;
    const int scale_lines = p.l2_lines / 16 + 1;
    prefetch_l2_range(p.w_data + s * p.row_bytes, rows * p.row_bytes, threadIdx.x, kThreads, p.l2_lines);
    if (kScaled) {
      prefetch_l2_range(p.w_scales + s * p.scales_per_row, 2 * rows * p.scales_per_row, threadIdx.x, kThreads,
                        scale_lines);
    }
    if constexpr (PAIRED) {
      prefetch_l2_range(p.u_data + s * p.row_bytes, rows * p.row_bytes, threadIdx.x, kThreads, p.l2_lines);
      if (kScaled) {
        prefetch_l2_range(p.u_scales + s * p.scales_per_row, 2 * rows * p.scales_per_row, threadIdx.x, kThreads,
                          scale_lines);
      }
    }
  }
  pdl_wait();  // everything below reads earlier kernels' results or writes
  pdl_launch_dependents();

  // This lane's 32 values of x (the columns of its weight slice), normalised as
  // launch_matvec normalises them.
  constexpr int kPer = 32 / C::kPieces;
  float xr[32];
  {
    const float* src = p.x + slot * p.x_slot_stride;
#pragma unroll
    for (int k = 0; k < 32; k += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + column_of<T>(segment, lane, k));
      xr[k] = v.x;
      xr[k + 1] = v.y;
      xr[k + 2] = v.z;
      xr[k + 3] = v.w;
    }
  }
  static_assert(kPer % 4 == 0, "pieces of whole float4s");
  if (p.x_norm_weight) {  // one slot (checked on the host); the generic kernel's sum order
    __shared__ double red[32];
    double ss = 0.0;
    for (int i = threadIdx.x; i < p.cols; i += kThreads) ss += static_cast<double>(p.x[i]) * p.x[i];
    ss = cuda_detail::block_sum_double(ss, red);
    const float scale = cuda_detail::rms_scale(ss, p.cols, p.x_norm_eps);
#pragma unroll
    for (int k = 0; k < 32; k += 4) {
      const float4 gv = *reinterpret_cast<const float4*>(p.x_norm_weight + column_of<T>(segment, lane, k));
      xr[k] = xr[k] * scale * gv.x;
      xr[k + 1] = xr[k + 1] * scale * gv.y;
      xr[k + 2] = xr[k + 2] * scale * gv.z;
      xr[k + 3] = xr[k + 3] * scale * gv.w;
    }
  }

  // Per-warp row sums of one batch, double-buffered so that one barrier per batch
  // suffices: buffer b & 1 is rewritten two batches later, after every warp has passed
  // the barrier of the batch in between (and so finished reading it).
  __shared__ float partial[2][kWarps][2 * R];
  float* y_slot = p.y + slot * p.y_slot_stride;
  const auto store = [&](int64_t r, float g, float u) {
    float v = g;
    if constexpr (PAIRED) v = swiglu(g, u, p.swiglu_limit);
    float* out = y_slot + r;
    *out = p.accumulate ? *out + v : v;
  };

  for (int b = 0; b < batches; ++b) {
    Raw next[PREFETCH ? R : 1];
    Raw next_up[PREFETCH && PAIRED ? R : 1];
    if constexpr (PREFETCH) {
      if (b + 1 < batches) load_batch(b + 1, next, next_up);
    }
    float acc[R];
    float acc_up[PAIRED ? R : 1];
#pragma unroll
    for (int i = 0; i < R; ++i) {
      acc[i] = C::dot(cur[i], xr);
      if constexpr (PAIRED) acc_up[i] = C::dot(cur_up[i], xr);
    }
    if constexpr (PREFETCH) {
#pragma unroll
      for (int i = 0; i < R; ++i) {
        cur[i] = next[i];
        if constexpr (PAIRED) cur_up[i] = next_up[i];
      }
    } else {
      if (b + 1 < batches) load_batch(b + 1, cur, cur_up);  // in flight during the reduction
    }
    const float g = warp_reduce_scatter<R>(acc, lane);
    float u = 0.0f;
    if constexpr (PAIRED) u = warp_reduce_scatter<R>(acc_up, lane);
    const bool holder = (lane & ((1 << kReduceScatterShift<R>) - 1)) == 0;
    const int index = lane >> kReduceScatterShift<R>;
    if (wpr == 1) {
      const int64_t r = row_of(b, index);
      if (holder && r < end) store(r, g, u);
      continue;
    }
    float* buf = &partial[b & 1][0][0];
    if (holder) {
      buf[warp * 2 * R + index] = g;
      if constexpr (PAIRED) buf[warp * 2 * R + R + index] = u;
    }
    __syncthreads();
    if (wi == 0 && lane < R) {
      const int64_t r = row_of(b, lane);
      if (r < end) {
        float gs = 0.0f, us = 0.0f;
        for (int k = 0; k < wpr; ++k) {  // warp order
          gs += buf[(warp + k) * 2 * R + lane];
          if constexpr (PAIRED) us += buf[(warp + k) * 2 * R + R + lane];
        }
        store(r, gs, us);
      }
    }
  }
}

using KernelFn = void (*)(DenseParams);

template <GgmlType T, int R, bool PREFETCH, bool PAIRED>
KernelFn built_kernel() {
  if constexpr (kBuilt<T, R, PREFETCH, PAIRED>) {
    return dense_matvec_kernel<T, R, PREFETCH, PAIRED>;
  } else {
    return nullptr;
  }
}

template <GgmlType T, bool PREFETCH, bool PAIRED>
KernelFn pick_rows(int rows_per_batch) {
  switch (rows_per_batch) {
    case 2: return built_kernel<T, 2, PREFETCH, PAIRED>();
    case 4: return built_kernel<T, 4, PREFETCH, PAIRED>();
    case 8: return built_kernel<T, 8, PREFETCH, PAIRED>();
    default: return nullptr;
  }
}

template <GgmlType T>
KernelFn pick_type(int rows_per_batch, bool prefetch, bool paired) {
  if (prefetch) {
    return paired ? pick_rows<T, true, true>(rows_per_batch) : pick_rows<T, true, false>(rows_per_batch);
  }
  return paired ? pick_rows<T, false, true>(rows_per_batch) : pick_rows<T, false, false>(rows_per_batch);
}

KernelFn pick_kernel(GgmlType type, int rows_per_batch, bool prefetch, bool paired) {
  if (type == GgmlType::Q8_0) return pick_type<GgmlType::Q8_0>(rows_per_batch, prefetch, paired);
  if (type == GgmlType::F16) return pick_type<GgmlType::F16>(rows_per_batch, prefetch, paired);
  return nullptr;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

Status matrix_fits(const DeviceMatrix* m, const char* name) {
  if (!m || m->data == nullptr) return Status::Error(std::string("dense_matvec: no ") + name + " matrix");
  if (m->type != GgmlType::Q8_0 && m->type != GgmlType::F16) {
    return Status::Error(std::string("dense_matvec: ") + name + " matrix type " + std::string(ggml_type_name(m->type)) +
                         " (Q8_0 or F16 only)");
  }
  if (m->cols != 1024 && m->cols != 2048 && m->cols != 4096 && m->cols != 8192) {
    return Status::Error(std::string("dense_matvec: ") + name + " matrix has " + std::to_string(m->cols) +
                         " columns (1024, 2048, 4096 or 8192 only)");
  }
  if (m->type == GgmlType::Q8_0 && m->scales == nullptr) {
    return Status::Error(std::string("dense_matvec: ") + name + " matrix (Q8_0) has no scales");
  }
  return Status::Ok();
}

// -1: not decided yet (the environment decides on first use); 0: off; 1: on.
std::atomic<int> g_dense_state{-1};

}  // namespace

bool dense_matvec_enabled() {
  int s = g_dense_state.load(std::memory_order_acquire);
  if (s < 0) {
    const char* v = std::getenv("DS4_CUDA_DENSE_MATVEC");
    s = v != nullptr && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0 || std::strcmp(v, "false") == 0)
            ? 0
            : 1;
    int expected = -1;
    if (!g_dense_state.compare_exchange_strong(expected, s)) s = expected;
  }
  return s == 1;
}

void set_dense_matvec_enabled(bool on) { g_dense_state.store(on ? 1 : 0, std::memory_order_release); }

Status launch_dense_or_matvec(const MatvecLaunch& m, cudaStream_t stream) {
  if (dense_matvec_enabled()) {
    Result<DenseMatvecLaunch> d = dense_matvec_from(m);
    if (d.ok() && dense_matvec_supported(*d).ok()) return launch_dense_matvec(*d, stream);
  }
  return launch_matvec(m, stream);
}

Status dense_matvec_supported(const DenseMatvecLaunch& l) {
  DS4_RETURN_IF_ERROR(matrix_fits(l.w, "weight"));
  const DeviceMatrix& w = *l.w;
  if (l.w_up) {
    DS4_RETURN_IF_ERROR(matrix_fits(l.w_up, "up"));
    if (l.w_up->type != w.type || l.w_up->cols != w.cols || l.w_up->rows != w.rows || l.w_up->count != w.count) {
      return Status::Error("dense_matvec: gate and up matrices differ in type or shape");
    }
  }
  if (!l.x || !l.y) return Status::Error("dense_matvec: x or y is null");
  if (!aligned16(l.x)) return Status::Error("dense_matvec: x is not 16-byte aligned");
  if (l.x_slot_stride < 0 || l.x_slot_stride % 4 != 0) {
    return Status::Error("dense_matvec: x_slot_stride " + std::to_string(l.x_slot_stride) +
                         " is not a non-negative multiple of 4");
  }
  if (l.y_slot_stride < 0) return Status::Error("dense_matvec: negative y_slot_stride");
  if (l.n_slots < 1 || l.n_slots > 65535) {
    return Status::Error("dense_matvec: n_slots " + std::to_string(l.n_slots) + " is not in 1..65535");
  }
  const int64_t n_rows = l.n_rows < 0 ? w.rows : l.n_rows;
  if (l.fixed_matrix < 0 || l.slot_row_stride < 0) {
    return Status::Error("dense_matvec: negative fixed_matrix or slot_row_stride");
  }
  const int64_t last = static_cast<int64_t>(l.fixed_matrix) * w.rows + (l.n_slots - 1) * l.slot_row_stride + n_rows;
  if (last > w.rows * w.count) {
    return Status::Error("dense_matvec: rows up to " + std::to_string(last) + " of a stack of " +
                         std::to_string(w.rows * w.count) + " (fixed_matrix, n_slots, slot_row_stride, n_rows)");
  }
  if (l.x_norm_weight) {
    if (l.n_slots != 1) return Status::Error("dense_matvec: normalising x on load needs one slot");
    if (!aligned16(l.x_norm_weight)) return Status::Error("dense_matvec: x_norm_weight is not 16-byte aligned");
  }
  return Status::Ok();
}

Result<DenseMatvecLaunch> dense_matvec_from(const MatvecLaunch& m) {
  if (m.n_tokens != 1) return Status::Error("dense_matvec_from: " + std::to_string(m.n_tokens) + " tokens (one only)");
  if (m.slot_matrix) return Status::Error("dense_matvec_from: per-slot matrix ids (slot_matrix)");
  if (m.sum_slots) return Status::Error("dense_matvec_from: summed slots (sum_slots)");
  if (m.slot_weight) return Status::Error("dense_matvec_from: slot weights (slot_weight)");
  if (m.enable) return Status::Error("dense_matvec_from: an enable flag");
  if (m.lanes_per_row != 0) return Status::Error("dense_matvec_from: lanes_per_row set");
  if (m.tile_partials_only) return Status::Error("dense_matvec_from: tile_partials_only set");
  DenseMatvecLaunch d;
  d.w = m.w;
  d.w_up = m.w_up;
  d.x = m.x;
  d.x_slot_stride = m.x_slot_stride;
  d.y = m.y;
  d.y_slot_stride = m.y_slot_stride;
  d.n_slots = m.n_slots;
  d.n_rows = m.n_rows;
  d.slot_row_stride = m.slot_row_stride;
  d.fixed_matrix = m.fixed_matrix;
  d.swiglu_limit = m.swiglu_limit;
  d.accumulate = m.accumulate;
  d.x_norm_weight = m.x_norm_weight;
  d.x_norm_eps = m.x_norm_eps;
  return d;
}

Status launch_dense_matvec(const DenseMatvecLaunch& l, cudaStream_t stream, const DenseMatvecOptions& o) {
  DS4_RETURN_IF_ERROR(dense_matvec_supported(l));
  if (o.rows_per_batch != 0 && o.rows_per_batch != 2 && o.rows_per_batch != 4 && o.rows_per_batch != 8) {
    return Status::Error("dense_matvec: rows_per_batch " + std::to_string(o.rows_per_batch) + " (0, 2, 4 or 8 only)");
  }
  if (o.blocks_per_sm < 0) return Status::Error("dense_matvec: negative blocks_per_sm");
  const DeviceMatrix& w = *l.w;
  const int64_t n_rows = l.n_rows < 0 ? w.rows : l.n_rows;
  if (n_rows == 0) return Status::Ok();
  const bool paired = l.w_up != nullptr;
  const int rows_per_batch = o.rows_per_batch != 0 ? o.rows_per_batch : paired ? 2 : 4;
  KernelFn fn = pick_kernel(w.type, rows_per_batch, o.prefetch, paired);
  if (!fn) {
    return Status::Error("dense_matvec: no kernel for " + std::string(ggml_type_name(w.type)) +
                         (paired ? " paired" : "") + " with rows_per_batch " + std::to_string(rows_per_batch) +
                         (o.prefetch ? " and prefetch" : "") + " (its registers would spill)");
  }
  auto res = kernel_residency(reinterpret_cast<const void*>(fn), kThreads, 0);
  DS4_RETURN_IF_ERROR(res.status());

  DenseParams p{};
  p.w_data = w.data;
  p.w_scales = w.scales;
  p.u_data = paired ? l.w_up->data : nullptr;
  p.u_scales = paired ? l.w_up->scales : nullptr;
  p.row_bytes = static_cast<int64_t>(w.data_row_bytes());
  p.scales_per_row = w.scales_per_row();
  p.first_row = static_cast<int64_t>(l.fixed_matrix) * w.rows;
  p.slot_row_stride = l.slot_row_stride;
  p.n_rows = n_rows;
  p.x = l.x;
  p.x_slot_stride = l.x_slot_stride;
  p.y = l.y;
  p.y_slot_stride = l.y_slot_stride;
  const int warps_per_row = static_cast<int>(w.cols / 1024);  // 32 columns per lane
  p.warp_shift = warps_per_row == 1 ? 0 : warps_per_row == 2 ? 1 : warps_per_row == 4 ? 2 : 3;
  p.swiglu_limit = l.swiglu_limit;
  p.accumulate = l.accumulate ? 1 : 0;
  p.x_norm_weight = l.x_norm_weight;
  p.x_norm_eps = l.x_norm_eps;
  p.cols = static_cast<int>(w.cols);
  p.l2_lines = o.l2_prefetch_kib < 0 ? INT_MAX : o.l2_prefetch_kib * 8;  // 128-byte lines

  // One wave: as many blocks as fit at once, shared equally by the slots, and no more
  // blocks in a slot than row groups have rows (every group gets at least one).
  const int per_sm = o.blocks_per_sm > 0 ? std::min(o.blocks_per_sm, res->blocks_per_sm) : res->blocks_per_sm;
  const int64_t capacity = static_cast<int64_t>(per_sm) * res->multiprocessors;
  const int64_t groups = kWarps / warps_per_row;
  const int64_t by_rows = (n_rows + groups - 1) / groups;
  p.blocks_per_slot = static_cast<int>(std::max<int64_t>(1, std::min(capacity / l.n_slots, by_rows)));
  const dim3 grid(static_cast<unsigned>(p.blocks_per_slot), static_cast<unsigned>(l.n_slots));
  const cudaError_t err = launch_kernel(fn, grid, dim3(kThreads), 0, stream, p);
  if (err != cudaSuccess) (void)cudaGetLastError();
  return cuda_status(err, "dense matvec launch");
}

}  // namespace ds4
