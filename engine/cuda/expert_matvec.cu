#include "cuda/expert_matvec.h"

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/dequant_chunk.cuh"
#include "cuda/device_limits.h"
#include "format/iq2xxs_grid.h"

namespace ds4 {
namespace {

using cuda_detail::Chunk;
using cuda_detail::Iq2xxsCompact;
using cuda_detail::PackedChunk;
using Iq2Chunk = Chunk<GgmlType::IQ2_XXS>;
using Q2kChunk = Chunk<GgmlType::Q2_K>;

constexpr int kTableWords = cuda_detail::kIq2xxsCompactWords;
constexpr int kLaneTableBytes = kTableWords * 32 * static_cast<int>(sizeof(uint32_t));
constexpr int kMaxThreads = 512;       // gate+up threads per block (the register budget: 128 per thread)
constexpr int kDownMaxThreads = 384;   // down: 12 warps (6 experts x 2048 columns), 170 registers per thread
constexpr int kMaxUsed = 32;
constexpr int kMaxRowsets = 8;         // named barriers 1..8 (0 is __syncthreads)
constexpr int kColsPerWarp = 1024;     // 32 lanes x one 32-column chunk each
constexpr int kMaxGateUpGroups = 8;    // gate+up cols <= 8192
constexpr int kMaxPartialBytes = 2 * (kMaxThreads / 32) * 16 * static_cast<int>(sizeof(float));

// The compact IQ2_XXS selector table of cuda/dequant_chunk.cuh (Iq2xxsCompact).
__device__ uint32_t g_selectors[kTableWords];

// v[0..P) per lane in, the warp's sum of v[lane >> (5 - log2 P)] out: a reduce-scatter
// (each exchange halves the values a lane carries) then a butterfly over the lanes that
// share an index. A fixed order of additions: the result does not depend on scheduling.
template <int P>
__device__ __forceinline__ float reduce_scatter(float (&v)[P], int lane) {
  static_assert(P >= 1 && P <= 32 && (P & (P - 1)) == 0, "P: a power of two up to 32");
  constexpr int kSteps = P == 1 ? 0 : P == 2 ? 1 : P == 4 ? 2 : P == 8 ? 3 : P == 16 ? 4 : 5;
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    const int half = P >> (step + 1);
    const int off = 16 >> step;
    const bool upper = (lane & off) != 0;
#pragma unroll
    for (int i = 0; i < P / 2; ++i) {
      if (i < half) {
        const float send = upper ? v[i] : v[i + half];
        const float keep = upper ? v[i + half] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
      }
    }
  }
  float s = v[0];
#pragma unroll
  for (int off = 16 >> kSteps; off >= 1; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  return s;
}

// The shift that turns a lane into the index reduce_scatter<P> leaves it.
template <int P>
constexpr int kIndexShift = P == 1 ? 5 : P == 2 ? 4 : P == 4 ? 3 : P == 8 ? 2 : P == 16 ? 1 : 0;

__device__ __forceinline__ float swiglu(float g, float u, float limit) {
  g = fminf(g, limit);
  u = fminf(fmaxf(u, -limit), limit);
  return g / (1.0f + expf(-g)) * u;
}

// Element k of 32 consecutive f32 values (16-byte aligned) into registers.
__device__ __forceinline__ void load_x_chunk(const float* src, float (&x)[32]) {
  const float4* p = reinterpret_cast<const float4*>(src);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float4 v = p[i];
    x[4 * i] = v.x;
    x[4 * i + 1] = v.y;
    x[4 * i + 2] = v.z;
    x[4 * i + 3] = v.w;
  }
}

// One IQ2_XXS chunk's product with the lane's x: the decoder's weights against x in
// order, times the chunk's factor.
__device__ __forceinline__ float iq2_chunk_dot(const Iq2Chunk::Raw& r, const uint32_t* sel, int stride,
                                               const float (&x)[32]) {
  float w[32];
  const float factor = Iq2xxsCompact::dequant(r, sel, stride, w);
  float d = 0.0f;
#pragma unroll
  for (int k = 0; k < 32; ++k) d = fmaf(w[k], x[k], d);
  return d * factor;
}

// One Q2_K chunk's product: sum_k (a q_k - m) x_k per 16-element half, formed as
// a * sum(q_k x_k) - m * sum(x_k) with the halves' x sums computed once per lane.
__device__ __forceinline__ float q2k_chunk_dot(const Q2kChunk::Raw& r, const float (&x)[32], float x_lo,
                                               float x_hi) {
  PackedChunk pk;
  Q2kChunk::pack(r, nullptr, &pk);
  float s[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      s[i >> 2] = fmaf(cuda_detail::byte_to_float(static_cast<uint32_t>(pk.w[i]), j), x[4 * i + j], s[i >> 2]);
    }
  }
  return fmaf(pk.a0, s[0], pk.a1 * s[1]) - fmaf(pk.m0, x_lo, pk.m1 * x_hi);
}

// Barrier of one row set (named barrier rowset + 1; barrier 0 is __syncthreads): row sets
// do not wait for each other, so their load phases overlap.
__device__ __forceinline__ void rowset_barrier(int rowset, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(rowset + 1), "r"(threads) : "memory");
}

// Gate+up. Block: `rowsets` sets of `groups` warps; warp `group` of a set owns column
// chunks [32 group, 32 group + 32), lane L chunk 32 group + L. A set takes batches of R
// consecutive output rows (one slot: rows is a multiple of R) and every lane computes
// its chunk's gate and up products for them; per batch the set's warps write their sums
// to shared memory (double-buffered: one barrier of the set per batch) and the set's
// first warp adds the groups in order and applies the SwiGLU. PREFETCH: the next batch's
// weights are loaded before this batch's products.
struct GateUpParams {
  const uint8_t* g_data;
  const uint16_t* g_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;
  int64_t scales_per_row;
  int rows;       // per expert
  const float* x;
  const int32_t* ids;
  const float* weights;
  int n_used;
  float limit;
  float* y;
  int groups;
  int rowsets;
  int batches;    // n_used * rows / R
  int iters;      // batches per row set
  int partial_offset;  // bytes into dynamic shared memory
};

template <int R>
struct GateUpBatch {
  Iq2Chunk::Raw g[R], u[R];
  int slot, r0;
};

template <int R, bool LANE_TABLES, bool PREFETCH>
__global__ void __launch_bounds__(kMaxThreads) expert_gate_up_kernel(GateUpParams p) {
  constexpr int P = 2 * R;
  extern __shared__ float4 dynamic4[];
  uint8_t* dynamic = reinterpret_cast<uint8_t*>(dynamic4);
  __shared__ uint32_t compact[LANE_TABLES ? 1 : kTableWords];
  __shared__ int32_t s_ids[kMaxUsed];
  __shared__ float s_weights[kMaxUsed];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_warps = blockDim.x >> 5;
  const int group = warp % p.groups, rowset = warp / p.groups;

  const uint32_t* sel;
  int stride;
  if constexpr (LANE_TABLES) {
    uint32_t* copies = reinterpret_cast<uint32_t*>(dynamic);
    for (int e = warp; e < kTableWords; e += n_warps) copies[e * 32 + lane] = g_selectors[e];
    sel = copies + lane;
    stride = 32;
  } else {
    for (int i = threadIdx.x; i < kTableWords; i += blockDim.x) compact[i] = g_selectors[i];
    sel = compact;
    stride = 1;
  }
  for (int i = threadIdx.x; i < p.n_used; i += blockDim.x) {
    s_ids[i] = p.ids[i];
    s_weights[i] = p.weights ? p.weights[i] : 1.0f;
  }
  float* partial = reinterpret_cast<float*>(dynamic + p.partial_offset);  // [2][rowsets][groups][P]
  const int chunk = group * 32 + lane;
  float x[32];
  load_x_chunk(p.x + chunk * 32, x);
  __syncthreads();

  const int workers = gridDim.x * p.rowsets;
  const int worker = blockIdx.x * p.rowsets + rowset;
  const auto fetch = [&](int batch, GateUpBatch<R>* b) {
    if (batch >= p.batches) return;
    const int q0 = batch * R;
    b->slot = q0 / p.rows;
    b->r0 = q0 - b->slot * p.rows;
    const int64_t grow0 = static_cast<int64_t>(s_ids[b->slot]) * p.rows + b->r0;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int64_t grow = grow0 + j;
      b->g[j] = Iq2Chunk::load(p.g_data + grow * p.row_bytes, p.g_scales + grow * p.scales_per_row, chunk);
      b->u[j] = Iq2Chunk::load(p.u_data + grow * p.row_bytes, p.u_scales + grow * p.scales_per_row, chunk);
    }
  };
  GateUpBatch<R> ahead;  // PREFETCH: the next batch's loads in flight
  if constexpr (PREFETCH) fetch(worker, &ahead);
  for (int it = 0; it < p.iters; ++it) {
    const int batch = worker + it * workers;
    const bool active = batch < p.batches;
    GateUpBatch<R> cur;
    if constexpr (PREFETCH) {
      cur = ahead;
      fetch(batch + workers, &ahead);
    } else {
      fetch(batch, &cur);
    }
    float acc[P];
    if (active) {
#pragma unroll
      for (int j = 0; j < R; ++j) {
        acc[j] = iq2_chunk_dot(cur.g[j], sel, stride, x);
        acc[R + j] = iq2_chunk_dot(cur.u[j], sel, stride, x);
      }
    } else {
#pragma unroll
      for (int j = 0; j < P; ++j) acc[j] = 0.0f;
    }
    const float sum = reduce_scatter<P>(acc, lane);
    const int buf = it & 1;
    float* sets = partial + buf * p.rowsets * p.groups * P;
    if ((lane & ((32 / P) - 1)) == 0) sets[(rowset * p.groups + group) * P + (lane >> kIndexShift<P>)] = sum;
    rowset_barrier(rowset, p.groups * 32);
    if (group == 0 && lane < R && active) {
      const float* mine = sets + rowset * p.groups * P;
      float gv = 0.0f, uv = 0.0f;
      for (int w = 0; w < p.groups; ++w) {
        gv += mine[w * P + lane];
        uv += mine[w * P + R + lane];
      }
      p.y[static_cast<int64_t>(cur.slot) * p.rows + cur.r0 + lane] = swiglu(gv, uv, p.limit) * s_weights[cur.slot];
    }
  }
}

// Down. Block: `rowsets` sets of n_used * groups warps; warp w of a set reads slot
// w / groups, column chunks [32 (w % groups), +32) of that slot's x, lane L chunk
// 32 (w % groups) + L. A set takes batches of R consecutive rows; per batch the warps'
// sums go to shared memory and the set's first warp adds them in warp order (slot-major)
// into y. PREFETCH as for gate+up.
struct DownParams {
  const uint8_t* data;
  int64_t row_bytes;
  int rows;
  int64_t x_slot_stride;
  const float* x;
  const int32_t* ids;
  float* y;
  int accumulate;
  int groups;     // warps per slot (cols / 1024)
  int warps;      // per row set: n_used * groups
  int rowsets;
  int batches;    // rows / R
  int iters;
};

template <int R, bool PREFETCH>
__global__ void __launch_bounds__(kDownMaxThreads) expert_down_kernel(DownParams p) {
  extern __shared__ float4 dynamic4[];
  float* partial = reinterpret_cast<float*>(dynamic4);  // [2][rowsets][warps][R]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int w = warp % p.warps, rowset = warp / p.warps;
  const int slot = w / p.groups;
  const int chunk = (w - slot * p.groups) * 32 + lane;
  float x[32];
  load_x_chunk(p.x + slot * p.x_slot_stride + chunk * 32, x);
  float x_lo = 0.0f, x_hi = 0.0f;
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    x_lo += x[k];
    x_hi += x[16 + k];
  }
  const uint8_t* matrix = p.data + static_cast<int64_t>(p.ids[slot]) * p.rows * p.row_bytes;

  const int workers = gridDim.x * p.rowsets;
  const int worker = blockIdx.x * p.rowsets + rowset;
  const auto fetch = [&](int batch, Q2kChunk::Raw* raw) {
    if (batch >= p.batches) return;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      raw[j] = Q2kChunk::load(matrix + static_cast<int64_t>(batch * R + j) * p.row_bytes, nullptr, chunk);
    }
  };
  Q2kChunk::Raw ahead[PREFETCH ? R : 1];  // PREFETCH: the next batch's loads in flight
  if constexpr (PREFETCH) fetch(worker, ahead);
  for (int it = 0; it < p.iters; ++it) {
    const int batch = worker + it * workers;
    const bool active = batch < p.batches;
    Q2kChunk::Raw cur[R];
    if constexpr (PREFETCH) {
#pragma unroll
      for (int j = 0; j < R; ++j) cur[j] = ahead[j];
      fetch(batch + workers, ahead);
    } else {
      fetch(batch, cur);
    }
    float acc[R];
    if (active) {
#pragma unroll
      for (int j = 0; j < R; ++j) acc[j] = q2k_chunk_dot(cur[j], x, x_lo, x_hi);
    } else {
#pragma unroll
      for (int j = 0; j < R; ++j) acc[j] = 0.0f;
    }
    const float sum = reduce_scatter<R>(acc, lane);
    const int buf = it & 1;
    float* sets = partial + buf * p.rowsets * p.warps * R;
    if ((lane & ((32 / R) - 1)) == 0) sets[(rowset * p.warps + w) * R + (lane >> kIndexShift<R>)] = sum;
    rowset_barrier(rowset, p.warps * 32);
    if (w == 0 && lane < R && active) {
      const float* mine = sets + rowset * p.warps * R;
      float v = 0.0f;
      for (int k = 0; k < p.warps; ++k) v += mine[k * R + lane];
      float* out = p.y + batch * R + lane;
      *out = p.accumulate ? *out + v : v;
    }
  }
}

using GateUpFn = void (*)(GateUpParams);
using DownFn = void (*)(DownParams);

template <int R>
GateUpFn pick_gate_up(bool lane_tables, bool prefetch) {
  if (lane_tables) return prefetch ? expert_gate_up_kernel<R, true, true> : expert_gate_up_kernel<R, true, false>;
  return prefetch ? expert_gate_up_kernel<R, false, true> : expert_gate_up_kernel<R, false, false>;
}

GateUpFn pick_gate_up(int r, bool lane_tables, bool prefetch) {
  return r == 8 ? pick_gate_up<8>(lane_tables, prefetch) : pick_gate_up<4>(lane_tables, prefetch);
}

DownFn pick_down(int r, bool prefetch) {
  if (r == 8) return prefetch ? expert_down_kernel<8, true> : expert_down_kernel<8, false>;
  return prefetch ? expert_down_kernel<4, true> : expert_down_kernel<4, false>;
}

// The compact selector table (layout: cuda_detail::Iq2xxsCompact): per codebook entry
// the magnitude level (0, 1, 2 for 8, 25, 43) of each element in its nibble; per sign
// index 4 in the nibble of each negated element.
Status make_selectors(uint32_t* table) {
  for (int g = 0; g < 256; ++g) {
    uint32_t word = 0;
    for (int i = 0; i < 8; ++i) {
      const uint32_t mag = static_cast<uint32_t>(kIq2xxsGrid[g] >> (8 * i)) & 0xFF;
      const uint32_t level = mag == 8 ? 0 : mag == 25 ? 1 : mag == 43 ? 2 : 3;
      if (level == 3) {
        return Status::Error("expert_matvec: IQ2_XXS codebook entry " + std::to_string(g) + " element " +
                             std::to_string(i) + " has magnitude " + std::to_string(mag) +
                             " (expected 8, 25 or 43)");
      }
      word |= level << (4 * i);
    }
    table[g] = word;
  }
  for (uint32_t si = 0; si < 128; ++si) {
    const uint32_t mask = iq2xxs_sign_mask(si);
    uint32_t word = 0;
    for (int i = 0; i < 8; ++i) {
      if ((mask >> i) & 1u) word |= 4u << (4 * i);
    }
    table[256 + si] = word;
  }
  return Status::Ok();
}

Status init_once() {
  uint32_t table[kTableWords];
  DS4_RETURN_IF_ERROR(make_selectors(table));
  // On a stream of its own (non-blocking), so that the legacy stream's implicit
  // synchronisation never touches a stream being captured.
  cudaStream_t stream = nullptr;
  DS4_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaError_t copied = cudaMemcpyToSymbolAsync(g_selectors, table, sizeof(table), 0, cudaMemcpyHostToDevice, stream);
  if (copied == cudaSuccess) copied = cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
  DS4_RETURN_IF_ERROR(cuda_status(copied, "uploading the IQ2_XXS selector table"));
  const int limit = max_shared_per_block();
  for (int r : {4, 8}) {
    for (bool lane : {false, true}) {
      for (bool prefetch : {false, true}) {
        const int bytes = std::min(limit, (lane ? kLaneTableBytes : 0) + kMaxPartialBytes);
        DS4_CUDA_TRY(cudaFuncSetAttribute(pick_gate_up(r, lane, prefetch), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          bytes));
      }
    }
  }
  return Status::Ok();
}

// Blocks of `fn` resident per multiprocessor with `threads` threads and `shared` dynamic
// bytes, and the multiprocessor count; cached per (device, kernel, threads, bytes).
struct Residency {
  int blocks_per_sm = 1;
  int multiprocessors = 1;
};

Result<Residency> residency(const void* fn, int threads, size_t shared) {
  struct Entry {
    int device;
    const void* fn;
    int threads;
    size_t shared;
    Residency value;
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;
  int device = 0;
  DS4_CUDA_TRY(cudaGetDevice(&device));
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (const Entry& e : cache) {
      if (e.device == device && e.fn == fn && e.threads == threads && e.shared == shared) return e.value;
    }
  }
  Residency r;
  DS4_CUDA_TRY(cudaDeviceGetAttribute(&r.multiprocessors, cudaDevAttrMultiProcessorCount, device));
  DS4_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r.blocks_per_sm, fn, threads, shared));
  if (r.blocks_per_sm < 1) {
    return Status::Error("expert_matvec: a block of " + std::to_string(threads) + " threads with " +
                         std::to_string(shared) + " bytes of shared memory does not fit on a multiprocessor");
  }
  std::lock_guard<std::mutex> lock(mutex);
  cache.push_back({device, fn, threads, shared, r});
  return r;
}

Status check_options(const ExpertMatvecOptions& o) {
  if (o.rows_per_batch != 4 && o.rows_per_batch != 8) {
    return Status::Error("expert_matvec: rows_per_batch " + std::to_string(o.rows_per_batch) + " (expected 4 or 8)");
  }
  if (o.blocks_per_sm < 0) {
    return Status::Error("expert_matvec: blocks_per_sm " + std::to_string(o.blocks_per_sm) + " is negative");
  }
  return Status::Ok();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks for `batches` batches of row sets: the resident capacity (or the option), but
// no more than there are batches for.
Result<int> grid_for(const void* fn, int threads, size_t shared, int rowsets, int batches,
                     const ExpertMatvecOptions& o) {
  auto res = residency(fn, threads, shared);
  DS4_RETURN_IF_ERROR(res.status());
  const int per_sm = o.blocks_per_sm > 0 ? std::min(o.blocks_per_sm, res->blocks_per_sm) : res->blocks_per_sm;
  const int needed = (batches + rowsets - 1) / rowsets;
  return std::max(1, std::min(per_sm * res->multiprocessors, needed));
}

}  // namespace

Status expert_matvec_init() {
  static std::once_flag once;
  static Status status;
  std::call_once(once, [] {
    // The first launch may come while this thread captures a graph (a decode graph
    // recorded on the first token): relaxed capture mode lets the one-time upload run.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    const bool exchanged = cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
    status = init_once();
    if (exchanged) cudaThreadExchangeStreamCaptureMode(&mode);
  });
  return status;
}

Status expert_gate_up_supported(const ExpertGateUpLaunch& l) {
  if (!l.gate || !l.up) return Status::Error("expert gate+up: gate or up matrix missing");
  const DeviceMatrix& g = *l.gate;
  const DeviceMatrix& u = *l.up;
  if (g.type != GgmlType::IQ2_XXS || u.type != GgmlType::IQ2_XXS) {
    return Status::Error("expert gate+up: weights are " + std::string(ggml_type_name(g.type)) + " / " +
                         std::string(ggml_type_name(u.type)) + " (expected IQ2_XXS)");
  }
  if (g.cols != u.cols || g.rows != u.rows || g.count != u.count) {
    return Status::Error("expert gate+up: gate and up stacks differ in shape");
  }
  if (g.cols % kColsPerWarp != 0 || g.cols / kColsPerWarp > kMaxGateUpGroups) {
    return Status::Error("expert gate+up: " + std::to_string(g.cols) + " columns (expected a multiple of " +
                         std::to_string(kColsPerWarp) + " up to " +
                         std::to_string(kColsPerWarp * kMaxGateUpGroups) + ")");
  }
  if (g.rows % 8 != 0 || g.rows <= 0) {
    return Status::Error("expert gate+up: " + std::to_string(g.rows) + " rows (expected a multiple of 8)");
  }
  if (l.n_used < 1 || l.n_used > kMaxUsed || l.n_used > g.count) {
    return Status::Error("expert gate+up: " + std::to_string(l.n_used) + " experts used of " +
                         std::to_string(g.count) + " (expected 1.." + std::to_string(kMaxUsed) + ")");
  }
  if (static_cast<int64_t>(l.n_used) * g.rows > (int64_t{1} << 30)) {
    return Status::Error("expert gate+up: too many output rows");
  }
  return Status::Ok();
}

Status expert_down_supported(const ExpertDownLaunch& l) {
  if (!l.down) return Status::Error("expert down: matrix missing");
  const DeviceMatrix& d = *l.down;
  if (d.type != GgmlType::Q2_K) {
    return Status::Error("expert down: weights are " + std::string(ggml_type_name(d.type)) + " (expected Q2_K)");
  }
  if (d.cols % kColsPerWarp != 0) {
    return Status::Error("expert down: " + std::to_string(d.cols) + " columns (expected a multiple of " +
                         std::to_string(kColsPerWarp) + ")");
  }
  if (l.n_used < 1 || l.n_used > d.count) {
    return Status::Error("expert down: " + std::to_string(l.n_used) + " experts used of " +
                         std::to_string(d.count));
  }
  const int64_t warps = l.n_used * (d.cols / kColsPerWarp);
  if (warps > kDownMaxThreads / 32) {
    return Status::Error("expert down: " + std::to_string(l.n_used) + " experts x " + std::to_string(d.cols) +
                         " columns need " + std::to_string(warps) + " warps per row (at most " +
                         std::to_string(kDownMaxThreads / 32) + ")");
  }
  if (d.rows % 8 != 0 || d.rows <= 0 || d.rows > (int64_t{1} << 30)) {
    return Status::Error("expert down: " + std::to_string(d.rows) + " rows (expected a multiple of 8)");
  }
  return Status::Ok();
}

Status launch_expert_gate_up(const ExpertGateUpLaunch& l, cudaStream_t stream, const ExpertMatvecOptions& o) {
  DS4_RETURN_IF_ERROR(expert_matvec_init());
  DS4_RETURN_IF_ERROR(check_options(o));
  DS4_RETURN_IF_ERROR(expert_gate_up_supported(l));
  if (!l.x || !l.y || !l.ids) return Status::Error("expert gate+up: x, y or ids missing");
  if (!aligned16(l.x)) return Status::Error("expert gate+up: x is not 16-byte aligned");
  const DeviceMatrix& g = *l.gate;
  const int r = o.rows_per_batch;
  GateUpParams p{};
  p.g_data = g.data;
  p.g_scales = g.scales;
  p.u_data = l.up->data;
  p.u_scales = l.up->scales;
  p.row_bytes = static_cast<int64_t>(g.data_row_bytes());
  p.scales_per_row = g.scales_per_row();
  p.rows = static_cast<int>(g.rows);
  p.x = l.x;
  p.ids = l.ids;
  p.weights = l.weights;
  p.n_used = l.n_used;
  p.limit = l.swiglu_limit;
  p.y = l.y;
  p.groups = static_cast<int>(g.cols / kColsPerWarp);
  // 16 warps a block: the lane tables are copied once per block, so fewer, larger blocks.
  p.rowsets = std::clamp((kMaxThreads / 32) / p.groups, 1, kMaxRowsets);
  p.batches = l.n_used * p.rows / r;
  const int threads = p.rowsets * p.groups * 32;
  bool lane_tables = o.lane_tables;
  const size_t partial_bytes = size_t{2} * p.rowsets * p.groups * 2 * r * sizeof(float);
  if (lane_tables && kLaneTableBytes + partial_bytes > static_cast<size_t>(max_shared_per_block())) {
    lane_tables = false;  // the compact table fits any GPU
  }
  p.partial_offset = lane_tables ? kLaneTableBytes : 0;
  const size_t shared = p.partial_offset + partial_bytes;
  GateUpFn fn = pick_gate_up(r, lane_tables, o.prefetch);
  auto grid = grid_for(reinterpret_cast<const void*>(fn), threads, shared, p.rowsets, p.batches, o);
  DS4_RETURN_IF_ERROR(grid.status());
  const int workers = *grid * p.rowsets;
  p.iters = (p.batches + workers - 1) / workers;
  fn<<<*grid, threads, shared, stream>>>(p);
  return cuda_status(cudaGetLastError(), "expert gate+up launch");
}

Status launch_expert_down(const ExpertDownLaunch& l, cudaStream_t stream, const ExpertMatvecOptions& o) {
  DS4_RETURN_IF_ERROR(expert_matvec_init());
  DS4_RETURN_IF_ERROR(check_options(o));
  DS4_RETURN_IF_ERROR(expert_down_supported(l));
  if (!l.x || !l.y || !l.ids) return Status::Error("expert down: x, y or ids missing");
  if (!aligned16(l.x)) return Status::Error("expert down: x is not 16-byte aligned");
  const DeviceMatrix& d = *l.down;
  const int r = o.rows_per_batch;
  DownParams p{};
  p.data = d.data;
  p.row_bytes = static_cast<int64_t>(d.data_row_bytes());
  p.rows = static_cast<int>(d.rows);
  p.x_slot_stride = d.cols;
  p.x = l.x;
  p.ids = l.ids;
  p.y = l.y;
  p.accumulate = l.accumulate ? 1 : 0;
  p.groups = static_cast<int>(d.cols / kColsPerWarp);
  p.warps = l.n_used * p.groups;
  p.rowsets = std::clamp((kDownMaxThreads / 32) / p.warps, 1, kMaxRowsets);
  p.batches = p.rows / r;
  const int threads = p.rowsets * p.warps * 32;
  const size_t shared = size_t{2} * p.rowsets * p.warps * r * sizeof(float);
  DownFn fn = pick_down(r, o.prefetch);
  auto grid = grid_for(reinterpret_cast<const void*>(fn), threads, shared, p.rowsets, p.batches, o);
  DS4_RETURN_IF_ERROR(grid.status());
  const int workers = *grid * p.rowsets;
  p.iters = (p.batches + workers - 1) / workers;
  fn<<<*grid, threads, shared, stream>>>(p);
  return cuda_status(cudaGetLastError(), "expert down launch");
}

}  // namespace ds4
