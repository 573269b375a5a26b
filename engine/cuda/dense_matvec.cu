#include "cuda/dense_matvec.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/dequant_chunk.cuh"
#include "cuda/device_limits.h"
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
  // The same slice from a copy of the row in shared memory (quants, and its scales).
  static __device__ __forceinline__ Raw load_shared(const uint8_t* row, const uint16_t* scales, int segment,
                                                    int lane) {
    Raw r;
#pragma unroll
    for (int p = 0; p < 2; ++p) r.q[p] = *reinterpret_cast<const int4*>(row + segment * 1024 + p * 512 + 16 * lane);
#pragma unroll
    for (int p = 0; p < 2; ++p) r.d[p] = scales[segment * 32 + p * 16 + (lane >> 1)];
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
  static __device__ __forceinline__ Raw load_shared(const uint8_t* row, const uint16_t*, int segment, int lane) {
    Raw r;
#pragma unroll
    for (int p = 0; p < 4; ++p) r.q[p] = *reinterpret_cast<const int4*>(row + segment * 2048 + p * 512 + 16 * lane);
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
    // Plain Q8_0 launches (q_b) load the weights with the sum's loads (one L2 round trip,
    // not two); the others have no registers to spare for them (ptxas -v: spills).
    constexpr bool kEarly = T == GgmlType::Q8_0 && !PAIRED;
    float4 gv[kEarly ? 8 : 1];
    if constexpr (kEarly) {
#pragma unroll
      for (int k = 0; k < 32; k += 4) {
        gv[k / 4] = __ldg(reinterpret_cast<const float4*>(p.x_norm_weight + column_of<T>(segment, lane, k)));
      }
    }
    __shared__ double red[32];
    double ss = 0.0;
    for (int i = threadIdx.x; i < p.cols; i += kThreads) ss += static_cast<double>(p.x[i]) * p.x[i];
    ss = cuda_detail::block_sum_double(ss, red);
    const float scale = cuda_detail::rms_scale(ss, p.cols, p.x_norm_eps);
#pragma unroll
    for (int k = 0; k < 32; k += 4) {
      float4 g;
      if constexpr (kEarly) {
        g = gv[k / 4];
      } else {
        g = *reinterpret_cast<const float4*>(p.x_norm_weight + column_of<T>(segment, lane, k));
      }
      xr[k] = xr[k] * scale * g.x;
      xr[k + 1] = xr[k + 1] * scale * g.y;
      xr[k + 2] = xr[k + 2] * scale * g.z;
      xr[k + 3] = xr[k + 3] * scale * g.w;
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

// ---- kStream: a ring of shared-memory stages filled by bulk asynchronous copies ----

constexpr int kMaxStages = 8;
constexpr int kBarrierBytes = 128;  // full[kMaxStages] then empty[kMaxStages], 8 bytes each

struct StreamParams {
  const uint8_t* w_data;
  const uint16_t* w_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;
  int64_t scales_per_row;
  int64_t first_row;        // fixed_matrix * w.rows: the stack row of slot 0, row 0
  int64_t slot_row_stride;
  int64_t n_rows;           // per slot
  int64_t total_rows;       // n_slots * n_rows: the (slot, row) pairs the blocks share
  const float* x;
  int64_t x_slot_stride;
  float* y;
  int64_t y_slot_stride;
  int warp_shift;           // log2(warps per row): 0..3
  int chunk_rows;           // rows one stage holds: stream_warps * stream_units / warps per row
  int stages;               // ring depth, 2..kMaxStages
  int matrix_bytes;         // one matrix's part of a stage: quants, then scales (16-aligned)
  int stage_bytes;          // matrix_bytes, twice when paired
  float swiglu_limit;
  int accumulate;
  const float* x_norm_weight;
  float x_norm_eps;
  int cols;
  int lane_copies;          // the producer warp's lanes copy with cp.async (else bulk copies)
};

// The rows of one stage: `len` rows of slot `slot` from row `row` on, in ring stage
// `stage`, whose use `phase` & 1 it is. Producer and consumers walk the block's range
// [begin, end) of (slot, row) pairs the same way, one division at the start.
struct Chunk {
  int64_t slot;
  int64_t row;
  int len;
  int stage;
  uint32_t phase;
};

struct ChunkWalk {
  int64_t cur, end, slot, row;
  int stage = 0;
  uint32_t phase = 0;
  __device__ ChunkWalk(const StreamParams& p, int64_t begin, int64_t end_)
      : cur(begin), end(end_), slot(begin / p.n_rows), row(begin - slot * p.n_rows) {}
  __device__ bool more() const { return cur < end; }
  __device__ Chunk next(const StreamParams& p) {
    int64_t len = p.chunk_rows;
    len = len < p.n_rows - row ? len : p.n_rows - row;
    len = len < end - cur ? len : end - cur;
    const Chunk c{slot, row, static_cast<int>(len), stage, phase};
    cur += len;
    row += len;
    if (row == p.n_rows) {
      ++slot;
      row = 0;
    }
    if (++stage == p.stages) {
      stage = 0;
      ++phase;
    }
    return c;
  }
};

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void barrier_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

// Arrives once and adds `bytes` to the transfer count the current phase waits for.
__device__ __forceinline__ uint64_t barrier_arrive_expect(uint32_t bar, uint32_t bytes) {
  uint64_t state;
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;"
               : "=l"(state)
               : "r"(bar), "r"(bytes)
               : "memory");
  return state;  // the phase token; waits here go by parity instead
}

__device__ __forceinline__ uint64_t barrier_arrive(uint32_t bar) {
  uint64_t state;
  asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];" : "=l"(state) : "r"(bar) : "memory");
  return state;
}

__device__ __forceinline__ bool barrier_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
      "selp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Waits for the phase of parity `parity` of `bar` to complete. A wait of more than two
// seconds can only be a broken ring: it stops the kernel with an error (never a hang).
__device__ __forceinline__ void barrier_wait(uint32_t bar, uint32_t parity, int who, int chunk) {
  if (barrier_try_wait(bar, parity)) return;
  const uint64_t start = global_ns();
  while (!barrier_try_wait(bar, parity)) {
    if (global_ns() - start > 2000000000ull) {
      printf("dense_matvec stream kernel: block %d %s %d waited 2 s for chunk %d\n", blockIdx.x,
             who < 0 ? "producer" : "warp", who, chunk);
      __trap();
    }
  }
}

// dst (shared) <- bytes of src (global), counted on `bar`. All 16-byte aligned.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(bar)
      : "memory");
}

// dst (shared) <- bytes of src (global) in 16-byte asynchronous copies, lane `lane` of
// a warp taking every 32nd piece. All 16-byte aligned.
__device__ __forceinline__ void lane_copy(uint32_t dst, const void* src, uint32_t bytes, int lane) {
  const char* from = static_cast<const char*>(src);
  for (uint32_t at = 16u * lane; at < bytes; at += 512u) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst + at), "l"(from + at) : "memory");
  }
}

// One arrival on `bar` once every asynchronous copy this thread issued so far is done
// (the barrier's count includes it: noinc).
__device__ __forceinline__ void barrier_arrive_on_copies(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}

// Named barrier `id` (1..15; 0 is __syncthreads) of `threads` threads.
__device__ __forceinline__ void consumer_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
#endif

// TEAMS teams of CW consumer warps, then one producer warp. Team t takes the chunks
// c with c % TEAMS == t (teams work on different stages at once: a stage's products,
// reductions and stores form a chain of dependent steps that one team alone would
// leave the multiprocessor idle through). Warp w of a team takes segment
// w & (warps per row - 1) of the rows of row group w >> warp_shift: rows
// i * groups + group of each stage, i < U, like kRegisters' batches of U rows.
template <GgmlType T, int CW, int U, bool PAIRED, int TEAMS>
__global__ void __launch_bounds__((CW * TEAMS + 1) * 32, 1) dense_stream_kernel(StreamParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using C = Slice<T>;
  using Raw = typename C::Raw;
  constexpr bool kScaled = T == GgmlType::Q8_0;
  constexpr int kTeamThreads = CW * 32;
  constexpr int kConsumers = CW * TEAMS * 32;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t full0 = shared_address(smem);
  const uint32_t empty0 = full0 + 8 * kMaxStages;
  uint8_t* ring = smem + kBarrierBytes;
  const int block_warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int team = block_warp / CW;
  const int warp = block_warp % CW;  // within the team
  const int64_t begin = p.total_rows * blockIdx.x / gridDim.x;
  const int64_t end = p.total_rows * (blockIdx.x + 1) / gridDim.x;
  const int64_t quant_bytes = static_cast<int64_t>(p.chunk_rows) * p.row_bytes;  // scales follow

  if (threadIdx.x == 0) {
    for (int s = 0; s < p.stages; ++s) {
      barrier_init(full0 + 8 * s, p.lane_copies ? 32 : 1);
      barrier_init(empty0 + 8 * s, CW);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();

  if (team == TEAMS) {  // the producer
    bool waited = false;
    // Bulk copies: lane 0 issues one per array and stage. Lane copies: every lane
    // issues 16-byte asynchronous copies (cp.async) and has the stage's barrier count
    // their completion (32 arrivals).
    if (p.lane_copies || lane == 0) {
      ChunkWalk walk(p, begin, end);
      for (int c = 0; walk.more(); ++c) {
        const Chunk ch = walk.next(p);
        const int stage = ch.stage;
        // The first `stages` chunks are requested before the PDL wait (weights only);
        // later stages are reused once every consumer warp has handed them back.
        if (c == p.stages) {
          pdl_wait();
          pdl_launch_dependents();
          waited = true;
        }
        if (c >= p.stages) barrier_wait(empty0 + 8 * stage, (ch.phase - 1) & 1, -1, c);
        const int64_t s = p.first_row + ch.slot * p.slot_row_stride + ch.row;
        const uint32_t q_bytes = static_cast<uint32_t>(ch.len * p.row_bytes);
        const uint32_t d_bytes = kScaled ? static_cast<uint32_t>(ch.len * p.scales_per_row * 2) : 0u;
        const uint32_t bar = full0 + 8 * stage;
        const uint32_t dst = shared_address(ring + static_cast<int64_t>(stage) * p.stage_bytes);
        const uint32_t scales_at = static_cast<uint32_t>(quant_bytes);
        const uint32_t up = dst + static_cast<uint32_t>(p.matrix_bytes);
        if (p.lane_copies) {
          lane_copy(dst, p.w_data + s * p.row_bytes, q_bytes, lane);
          if (kScaled) lane_copy(dst + scales_at, p.w_scales + s * p.scales_per_row, d_bytes, lane);
          if constexpr (PAIRED) {
            lane_copy(up, p.u_data + s * p.row_bytes, q_bytes, lane);
            if (kScaled) lane_copy(up + scales_at, p.u_scales + s * p.scales_per_row, d_bytes, lane);
          }
          barrier_arrive_on_copies(bar);
          continue;
        }
        barrier_arrive_expect(bar, (q_bytes + d_bytes) * (PAIRED ? 2u : 1u));
        bulk_copy(dst, p.w_data + s * p.row_bytes, q_bytes, bar);
        if (kScaled) bulk_copy(dst + scales_at, p.w_scales + s * p.scales_per_row, d_bytes, bar);
        if constexpr (PAIRED) {
          bulk_copy(up, p.u_data + s * p.row_bytes, q_bytes, bar);
          if (kScaled) bulk_copy(up + scales_at, p.u_scales + s * p.scales_per_row, d_bytes, bar);
        }
      }
    }
    if (!waited) {  // it reads nothing earlier kernels wrote; it waits because every thread must
      pdl_wait();
      pdl_launch_dependents();
    }
    return;
  }

  const int wpr = 1 << p.warp_shift;
  const int groups = CW >> p.warp_shift;
  const int group = warp >> p.warp_shift;
  const int wi = warp & (wpr - 1);
  const int segment = wi;

  // The norm weights (immutable) are read before the wait; x after it, in flight
  // together with the strided loads of the sum of squares.
  float gw[32];
  if (p.x_norm_weight) {
#pragma unroll
    for (int k = 0; k < 32; k += 4) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(p.x_norm_weight + column_of<T>(segment, lane, k)));
      gw[k] = v.x;
      gw[k + 1] = v.y;
      gw[k + 2] = v.z;
      gw[k + 3] = v.w;
    }
  }

  pdl_wait();  // everything below reads earlier kernels' results or writes
  pdl_launch_dependents();

  float xr[32];
  int64_t x_slot = -1;
  const auto load_x = [&](int64_t slot) {
    const float* src = p.x + slot * p.x_slot_stride;
#pragma unroll
    for (int k = 0; k < 32; k += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + column_of<T>(segment, lane, k));
      xr[k] = v.x;
      xr[k + 1] = v.y;
      xr[k + 2] = v.z;
      xr[k + 3] = v.w;
    }
  };
  // x normalised as launch_matvec normalises it: the same 256-thread strided double sum
  // (threads from 256 on add nothing), the same final butterfly, then x * scale * weight.
  if (p.x_norm_weight) {  // one slot (checked on the host)
    load_x(0);
    x_slot = 0;
    __shared__ double red[32];
    double ss = 0.0;
    if (threadIdx.x < 256) {
      for (int i = threadIdx.x; i < p.cols; i += 256) ss += static_cast<double>(p.x[i]) * p.x[i];
    }
    ss = cuda_detail::warp_sum_double(ss);
    if (lane == 0) red[block_warp] = ss;
    consumer_barrier(2 + TEAMS, kConsumers);
    double t = lane < CW * TEAMS ? red[lane] : 0.0;
    t = cuda_detail::warp_sum_double(t);
    const float scale = cuda_detail::rms_scale(t, p.cols, p.x_norm_eps);
#pragma unroll
    for (int k = 0; k < 32; ++k) xr[k] = xr[k] * scale * gw[k];
  }

  // Per-warp row sums of a stage (rows of several segments), double-buffered by chunk
  // parity as in kRegisters: one consumer barrier per stage.
  __shared__ float partials[TEAMS][2][CW][2 * U];
  const auto store = [&](const Chunk& ch, int64_t r, float g, float u) {
    float v = g;
    if constexpr (PAIRED) v = swiglu(g, u, p.swiglu_limit);
    float* out = p.y + ch.slot * p.y_slot_stride + ch.row + r;
    *out = p.accumulate ? *out + v : v;
  };

  ChunkWalk walk(p, begin, end);
  for (int c = 0; walk.more(); ++c) {
    const Chunk ch = walk.next(p);
    if (TEAMS > 1 && c % TEAMS != team) continue;  // another team's stage
    if (ch.slot != x_slot) {
      load_x(ch.slot);
      x_slot = ch.slot;
    }
    const int stage = ch.stage;
    const uint8_t* base = ring + static_cast<int64_t>(stage) * p.stage_bytes;
    barrier_wait(full0 + 8 * stage, ch.phase & 1, block_warp, c);
    float acc[U];
    float acc_up[PAIRED ? U : 1];
#pragma unroll
    for (int i = 0; i < U; ++i) {
      const int r = i * groups + group;  // < chunk_rows; rows from ch.len on are not stored
      const uint8_t* q = base + r * p.row_bytes;
      const uint16_t* d = reinterpret_cast<const uint16_t*>(base + quant_bytes) + r * p.scales_per_row;
      acc[i] = C::dot(C::load_shared(q, d, segment, lane), xr);
      if constexpr (PAIRED) {
        const uint8_t* uq = q + p.matrix_bytes;
        const uint16_t* ud = reinterpret_cast<const uint16_t*>(base + p.matrix_bytes + quant_bytes) +
                             r * p.scales_per_row;
        acc_up[i] = C::dot(C::load_shared(uq, ud, segment, lane), xr);
      }
    }
    __syncwarp();
    if (lane == 0) barrier_arrive(empty0 + 8 * stage);  // this warp is done with the stage
    const float g = warp_reduce_scatter<U>(acc, lane);
    float u = 0.0f;
    if constexpr (PAIRED) u = warp_reduce_scatter<U>(acc_up, lane);
    const bool holder = (lane & ((1 << kReduceScatterShift<U>) - 1)) == 0;
    const int index = lane >> kReduceScatterShift<U>;
    if (wpr == 1) {
      const int r = index * groups + group;
      if (holder && r < ch.len) store(ch, r, g, u);
      continue;
    }
    float* buf = &partials[team][(c / TEAMS) & 1][0][0];
    if (holder) {
      buf[warp * 2 * U + index] = g;
      if constexpr (PAIRED) buf[warp * 2 * U + U + index] = u;
    }
    consumer_barrier(1 + team, kTeamThreads);
    if (wi == 0 && lane < U) {
      const int r = lane * groups + group;
      if (r < ch.len) {
        float gs = 0.0f, us = 0.0f;
        for (int k = 0; k < wpr; ++k) {  // warp order
          gs += buf[(warp + k) * 2 * U + lane];
          if constexpr (PAIRED) us += buf[(warp + k) * 2 * U + U + lane];
        }
        store(ch, r, gs, us);
      }
    }
  }
#else
  pdl_wait();  // not built below sm_90: the launcher never picks it there
#endif
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

using StreamFn = void (*)(StreamParams);

template <GgmlType T, int CW, bool PAIRED, int TEAMS>
StreamFn pick_stream_units(int units) {
  switch (units) {
    case 1: return dense_stream_kernel<T, CW, 1, PAIRED, TEAMS>;
    case 2: return dense_stream_kernel<T, CW, 2, PAIRED, TEAMS>;
    case 4: return dense_stream_kernel<T, CW, 4, PAIRED, TEAMS>;
    default: return nullptr;
  }
}

template <GgmlType T, bool PAIRED>
StreamFn pick_stream_shape(int warps, int units, int teams) {
  if (warps == 8 && teams == 1) return pick_stream_units<T, 8, PAIRED, 1>(units);
  if (warps == 8 && teams == 2) return pick_stream_units<T, 8, PAIRED, 2>(units);
  if (warps == 16 && teams == 1) return pick_stream_units<T, 16, PAIRED, 1>(units);
  return nullptr;  // 16 warps in two teams: more threads than registers allow
}

StreamFn pick_stream(GgmlType type, int warps, int units, int teams, bool paired) {
  if (type == GgmlType::Q8_0) {
    return paired ? pick_stream_shape<GgmlType::Q8_0, true>(warps, units, teams)
                  : pick_stream_shape<GgmlType::Q8_0, false>(warps, units, teams);
  }
  if (type == GgmlType::F16) {
    return paired ? pick_stream_shape<GgmlType::F16, true>(warps, units, teams)
                  : pick_stream_shape<GgmlType::F16, false>(warps, units, teams);
  }
  return nullptr;
}

// Lets `fn` take as much dynamic shared memory as the device allows beside its static
// shared memory (once per device and kernel); returns that room in bytes.
Result<int> stream_shared_room(StreamFn fn) {
  struct Entry {
    int device;
    StreamFn fn;
    int room;
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;
  int device = 0;
  DS4_CUDA_TRY(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  for (const Entry& e : cache) {
    if (e.device == device && e.fn == fn) return e.room;
  }
  cudaFuncAttributes attributes{};
  DS4_CUDA_TRY(cudaFuncGetAttributes(&attributes, fn));
  const int room = max_shared_per_block() - static_cast<int>(attributes.sharedSizeBytes);
  if (room <= kBarrierBytes) return Status::Error("dense_matvec: no shared memory left for the stream kernel's ring");
  DS4_CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, room));
  cache.push_back({device, fn, room});
  return room;
}

bool device_has_bulk_copies() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 9;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether the stream kernel can read these weights here: sm_90 or newer, and weight and
// scale arrays at 16-byte boundaries (bulk copies move aligned 16-byte multiples).
bool stream_fits(const DenseMatvecLaunch& l) {
  const auto ok = [](const DeviceMatrix* m) {
    return m == nullptr || (aligned16(m->data) && (m->type != GgmlType::Q8_0 || aligned16(m->scales)));
  };
  return ok(l.w) && ok(l.w_up) && device_has_bulk_copies();
}

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

// The process-wide DenseKernel as an int; kDefault: not decided yet (the environment
// decides on first use).
std::atomic<int> g_dense_kernel{static_cast<int>(DenseKernel::kDefault)};

DenseKernel kernel_from_environment() {
  const char* v = std::getenv("DS4_CUDA_DENSE_KERNEL");
  return v != nullptr && std::strcmp(v, "stream") == 0 ? DenseKernel::kStream : DenseKernel::kRegisters;
}

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

DenseKernel dense_matvec_kernel() {
  int k = g_dense_kernel.load(std::memory_order_acquire);
  if (k == static_cast<int>(DenseKernel::kDefault)) {
    int expected = k;
    k = static_cast<int>(kernel_from_environment());
    if (!g_dense_kernel.compare_exchange_strong(expected, k)) k = expected;
  }
  return static_cast<DenseKernel>(k);
}

void set_dense_matvec_kernel(DenseKernel kernel) {
  g_dense_kernel.store(static_cast<int>(kernel), std::memory_order_release);
}

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

namespace {

// The stream kernel's launch: a ring of stages of stream_warps * stream_units row pieces
// per matrix, and one block per multiprocessor slot, each taking an equal share of the
// (slot, row) pairs.
Status launch_stream(const DenseMatvecLaunch& l, int64_t n_rows, cudaStream_t stream, const DenseMatvecOptions& o) {
  const DeviceMatrix& w = *l.w;
  const bool paired = l.w_up != nullptr;
  const int warps = o.stream_warps != 0 ? o.stream_warps : 8;
  const int units = o.stream_units != 0 ? o.stream_units : paired ? 1 : 2;
  const int teams = o.stream_teams != 0 ? o.stream_teams : 1;
  StreamFn fn = pick_stream(w.type, warps, units, teams, paired);
  if (!fn) {
    return Status::Error("dense_matvec: no stream kernel with stream_warps " + std::to_string(warps) +
                         ", stream_units " + std::to_string(units) + " and stream_teams " + std::to_string(teams) +
                         " (8 or 16 warps; 1, 2 or 4 units; two teams of 8 warps at most)");
  }
  Result<int> room = stream_shared_room(fn);
  DS4_RETURN_IF_ERROR(room.status());

  StreamParams p{};
  const int warps_per_row = static_cast<int>(w.cols / 1024);
  p.warp_shift = warps_per_row == 1 ? 0 : warps_per_row == 2 ? 1 : warps_per_row == 4 ? 2 : 3;
  p.chunk_rows = warps * units / warps_per_row;
  p.row_bytes = static_cast<int64_t>(w.data_row_bytes());
  p.scales_per_row = w.scales_per_row();
  p.matrix_bytes = static_cast<int>(p.chunk_rows * (p.row_bytes + 2 * p.scales_per_row));
  p.stage_bytes = p.matrix_bytes * (paired ? 2 : 1);
  const int budget = std::min(*room, o.stream_ring_kib > 0 ? o.stream_ring_kib * 1024 : 96 * 1024);
  p.stages = std::min(kMaxStages, (budget - kBarrierBytes) / p.stage_bytes);
  if (p.stages < 2) {
    return Status::Error("dense_matvec: two stream stages of " + std::to_string(p.stage_bytes) +
                         " bytes do not fit in " + std::to_string(budget) +
                         " bytes of shared memory (stream_ring_kib, stream_warps, stream_units)");
  }
  const size_t shared = static_cast<size_t>(kBarrierBytes + p.stages * p.stage_bytes);
  const int threads = (warps * teams + 1) * 32;
  auto res = kernel_residency(reinterpret_cast<const void*>(fn), threads, shared);
  DS4_RETURN_IF_ERROR(res.status());

  p.w_data = w.data;
  p.w_scales = w.scales;
  p.u_data = paired ? l.w_up->data : nullptr;
  p.u_scales = paired ? l.w_up->scales : nullptr;
  p.first_row = static_cast<int64_t>(l.fixed_matrix) * w.rows;
  p.slot_row_stride = l.slot_row_stride;
  p.n_rows = n_rows;
  p.total_rows = n_rows * l.n_slots;
  p.x = l.x;
  p.x_slot_stride = l.x_slot_stride;
  p.y = l.y;
  p.y_slot_stride = l.y_slot_stride;
  p.swiglu_limit = l.swiglu_limit;
  p.accumulate = l.accumulate ? 1 : 0;
  p.x_norm_weight = l.x_norm_weight;
  p.x_norm_eps = l.x_norm_eps;
  p.cols = static_cast<int>(w.cols);
  p.lane_copies = o.stream_lane_copies ? 1 : 0;

  // One block per multiprocessor unless asked: the next launch's block then fits beside
  // it and requests its first stages while this one drains (PDL).
  const int per_sm = std::min(o.blocks_per_sm > 0 ? o.blocks_per_sm : 1, res->blocks_per_sm);
  const int64_t capacity = static_cast<int64_t>(per_sm) * res->multiprocessors;
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min(capacity, p.total_rows)));
  const cudaError_t err = launch_kernel(fn, dim3(blocks), dim3(threads), shared, stream, p);
  if (err != cudaSuccess) (void)cudaGetLastError();
  return cuda_status(err, "dense matvec stream launch");
}

}  // namespace

Status launch_dense_matvec(const DenseMatvecLaunch& l, cudaStream_t stream, const DenseMatvecOptions& o) {
  DS4_RETURN_IF_ERROR(dense_matvec_supported(l));
  if (o.rows_per_batch != 0 && o.rows_per_batch != 2 && o.rows_per_batch != 4 && o.rows_per_batch != 8) {
    return Status::Error("dense_matvec: rows_per_batch " + std::to_string(o.rows_per_batch) + " (0, 2, 4 or 8 only)");
  }
  if (o.blocks_per_sm < 0) return Status::Error("dense_matvec: negative blocks_per_sm");
  if (o.stream_ring_kib < 0) return Status::Error("dense_matvec: negative stream_ring_kib");
  const DeviceMatrix& w = *l.w;
  const int64_t n_rows = l.n_rows < 0 ? w.rows : l.n_rows;
  if (n_rows == 0) return Status::Ok();
  const DenseKernel kernel = o.kernel == DenseKernel::kDefault ? dense_matvec_kernel() : o.kernel;
  if (kernel == DenseKernel::kStream && stream_fits(l)) return launch_stream(l, n_rows, stream, o);
  const bool paired = l.w_up != nullptr;
  // The defaults measured fastest on the H200 (graph chains with PDL): launches of up to
  // 12 MB of weights (q_a, kv, the shared expert's down) one block per multiprocessor
  // (q_a 2.87 against 3.65 us, kv 2.69 against 3.42), plain F16 launches of up to 4 MB
  // (the router) two rows per batch (2.03 against 2.36 us), larger plain Q8_0 launches of
  // 1024 columns (q_b) eight (11.63 against 12.06 us; 11.72 against 11.93 in another run).
  const double weight_bytes = static_cast<double>(w.data_row_bytes() + 2 * w.scales_per_row()) *
                              static_cast<double>(n_rows) * l.n_slots * (paired ? 2 : 1);
  const bool small = weight_bytes <= 12e6;
  const bool small_f16 = w.type == GgmlType::F16 && !paired && weight_bytes <= 4e6;
  const bool narrow_q8 = w.type == GgmlType::Q8_0 && !paired && w.cols == 1024 && !small && o.prefetch;
  const int rows_per_batch = o.rows_per_batch != 0         ? o.rows_per_batch
                             : paired || small_f16         ? 2
                             : narrow_q8                   ? 8
                                                           : 4;
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
  const int asked = o.blocks_per_sm > 0 ? o.blocks_per_sm : small ? 1 : res->blocks_per_sm;
  const int per_sm = std::min(asked, res->blocks_per_sm);
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
