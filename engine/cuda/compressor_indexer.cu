#include "cuda/compressor_indexer.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cuda/cuda_check.h"
#include "cuda/device_limits.h"
#include "cuda/launch.h"
#include "cuda/row_post.cuh"

namespace ds4 {
namespace {

using namespace cuda_detail;

constexpr int kSelectThreads = 1024;

__global__ void compressor_kernel(CompressorLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  extern __shared__ float shared[];
  float* v = shared;
  float* scratch = shared + p.d;
  const int pos = *p.pos;
  const int coff = p.ratio == 4 ? 2 : 1;
  const int w = coff * p.d;
  const int phase = pos % p.ratio;
  const int slot = pos % p.state_slots;
  if (p.gate_flag && threadIdx.x == 0) *p.gate_flag = ((pos + 1) / 4) > p.gate_topk ? 1 : 0;
  for (int j = threadIdx.x; j < w; j += blockDim.x) {
    p.state_k[slot * w + j] = p.k[j];
    p.state_z[slot * w + j] = p.z[j] + p.ape[phase * w + j];
  }
  __syncthreads();
  if ((pos + 1) % p.ratio != 0) return;
  const int c = (pos + 1) / p.ratio - 1;
  for (int j = threadIdx.x; j < p.d; j += blockDim.x) {
    // Candidates: (first position, count, channel offset) per half.
    float mx = -INFINITY;
    const int halves = coff;
    for (int half = 0; half < halves; ++half) {
      const int first = coff == 2 ? (c - 1 + half) * p.ratio : c * p.ratio;
      if (first < 0) continue;
      const int ch = coff == 2 ? half * p.d + j : j;
      for (int t = 0; t < p.ratio; ++t) {
        mx = fmaxf(mx, p.state_z[((first + t) % p.state_slots) * w + ch]);
      }
    }
    // Weights and sums in the CPU reference's order and rounding (exp in double,
    // rounded once; no fused multiply-adds): the pooled values feed the QAT round
    // trips, where a last-bit difference can move a value across a rounding step.
    float sum = 0.0f;
    for (int half = 0; half < halves; ++half) {
      const int first = coff == 2 ? (c - 1 + half) * p.ratio : c * p.ratio;
      if (first < 0) continue;
      const int ch = coff == 2 ? half * p.d + j : j;
      for (int t = 0; t < p.ratio; ++t) {
        const float e = static_cast<float>(exp(static_cast<double>(
            p.state_z[((first + t) % p.state_slots) * w + ch] - mx)));
        sum = __fadd_rn(sum, e);
      }
    }
    float pooled = 0.0f;
    for (int half = 0; half < halves; ++half) {
      const int first = coff == 2 ? (c - 1 + half) * p.ratio : c * p.ratio;
      if (first < 0) continue;
      const int ch = coff == 2 ? half * p.d + j : j;
      for (int t = 0; t < p.ratio; ++t) {
        const int s = ((first + t) % p.state_slots) * w + ch;
        const float e = static_cast<float>(exp(static_cast<double>(p.state_z[s] - mx)));
        pooled = __fadd_rn(pooled, __fmul_rn(p.state_k[s], __fdiv_rn(e, sum)));
      }
    }
    v[j] = pooled;
  }
  __syncthreads();
  post_process_row(v, p.d, true, p.norm_weight, p.eps, p.rope_dim, p.rope_freqs,
                   static_cast<float>(c * p.ratio), false, static_cast<int>(p.qat), scratch);
  if (c >= p.max_rows) return;
  for (int j = threadIdx.x; j < p.d; j += blockDim.x) p.rows[static_cast<int64_t>(c) * p.d + j] = v[j];
}

__global__ void indexer_gate_kernel(const int32_t* pos, int ratio, int topk, int32_t* flag) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  *flag = ((*pos + 1) / ratio) > topk ? 1 : 0;
}

__global__ void indexer_score_kernel(IndexerLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (!*p.active) return;
  extern __shared__ float shared[];
  float* q = shared;
  float* w = shared + p.heads * p.head_dim;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(p.head_dim))) *
                      static_cast<float>(1.0 / sqrt(static_cast<double>(p.heads)));
  for (int i = threadIdx.x; i < p.heads * p.head_dim; i += blockDim.x) q[i] = p.q[i];
  for (int i = threadIdx.x; i < p.heads; i += blockDim.x) w[i] = p.weights[i] * scale;
  __syncthreads();
  const int nc = (*p.pos + 1) / p.ratio;
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  for (int64_t c = blockIdx.x * warps + (threadIdx.x >> 5); c < nc && c < p.max_rows;
       c += static_cast<int64_t>(gridDim.x) * warps) {
    const float* row = p.rows + c * p.head_dim;
    float score = 0.0f;
    for (int h = 0; h < p.heads; ++h) {
      float d = 0.0f;
      for (int i = lane; i < p.head_dim; i += 32) d += q[h * p.head_dim + i] * row[i];
      d = warp_sum(d);
      score += fmaxf(d, 0.0f) * w[h];
    }
    if (lane == 0) p.scores[c] = score;
  }
}

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum over the block (kSelectThreads values); returns this thread's.
__device__ int block_exclusive_scan(int v, int* buf) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int off = 1; off < kSelectThreads; off <<= 1) {
    const int add = threadIdx.x >= off ? buf[threadIdx.x - off] : 0;
    __syncthreads();
    buf[threadIdx.x] += add;
    __syncthreads();
  }
  const int inclusive = buf[threadIdx.x];
  __syncthreads();
  return inclusive - v;
}

__global__ void __launch_bounds__(kSelectThreads) indexer_topk_kernel(IndexerLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (!*p.active) return;
  __shared__ int hist[256];
  __shared__ int scan_buf[kSelectThreads];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  int nc = (*p.pos + 1) / p.ratio;
  if (nc > p.max_rows) nc = static_cast<int>(p.max_rows);
  uint32_t prefix = 0, mask = 0;
  int remaining = p.topk;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < nc; i += blockDim.x) {
      const uint32_t key = order_key(p.scores[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0;
      int b = 255;
      for (; b > 0; --b) {
        if (above + hist[b] >= remaining) break;
        above += hist[b];
      }
      s_prefix = prefix | (static_cast<uint32_t>(b) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
    __syncthreads();
  }
  // prefix is the k-th largest key; take every larger key and the first `remaining` equal ones.
  const int chunk = (nc + kSelectThreads - 1) / kSelectThreads;
  const int begin = threadIdx.x * chunk;
  const int end = min(nc, begin + chunk);
  int gt = 0, eq = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = order_key(p.scores[i]);
    gt += key > prefix;
    eq += key == prefix;
  }
  const int eq_before = block_exclusive_scan(eq, scan_buf);
  const int take_eq = max(0, min(eq, remaining - eq_before));
  int offset = block_exclusive_scan(gt + take_eq, scan_buf);
  int taken_eq = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = order_key(p.scores[i]);
    if (key > prefix || (key == prefix && taken_eq < take_eq)) {
      if (key == prefix) ++taken_eq;
      if (offset < p.topk) p.selected[offset] = i;
      ++offset;
    }
  }
}

// The current scoring kernel: blocks past the visible rows return before loading the
// query (the grid is sized for the largest context), and with 128-dim rows each lane
// holds its four row values in registers across the heads. Same products and sums, in
// the same order, as indexer_score_kernel.
__global__ void indexer_score_rows_kernel(IndexerLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (!*p.active) return;
  int64_t nc = (*p.pos + 1) / p.ratio;
  if (nc > p.max_rows) nc = p.max_rows;
  const int warps = blockDim.x >> 5;
  if (static_cast<int64_t>(blockIdx.x) * warps >= nc) return;
  extern __shared__ float shared[];
  float* q = shared;
  float* w = shared + p.heads * p.head_dim;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(p.head_dim))) *
                      static_cast<float>(1.0 / sqrt(static_cast<double>(p.heads)));
  for (int i = threadIdx.x; i < p.heads * p.head_dim; i += blockDim.x) q[i] = p.q[i];
  for (int i = threadIdx.x; i < p.heads; i += blockDim.x) w[i] = p.weights[i] * scale;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int64_t c = blockIdx.x * warps + (threadIdx.x >> 5); c < nc;
       c += static_cast<int64_t>(gridDim.x) * warps) {
    const float* row = p.rows + c * p.head_dim;
    float score = 0.0f;
    if (p.head_dim == 128) {
      const float r0 = row[lane], r1 = row[lane + 32], r2 = row[lane + 64], r3 = row[lane + 96];
#pragma unroll 4
      for (int h = 0; h < p.heads; ++h) {
        const float* qh = q + h * 128;
        float d = 0.0f;
        d += qh[lane] * r0;
        d += qh[lane + 32] * r1;
        d += qh[lane + 64] * r2;
        d += qh[lane + 96] * r3;
        d = warp_sum(d);
        score += fmaxf(d, 0.0f) * w[h];
      }
    } else {
      for (int h = 0; h < p.heads; ++h) {
        float d = 0.0f;
        for (int i = lane; i < p.head_dim; i += 32) d += q[h * p.head_dim + i] * row[i];
        d = warp_sum(d);
        score += fmaxf(d, 0.0f) * w[h];
      }
    }
    if (lane == 0) p.scores[c] = score;
  }
}

// Sum of the first `n` entries of a small shared array (n <= 32), read by every thread.
__device__ __forceinline__ int shared_prefix(const int* counts, int n) {
  int s = 0;
  for (int k = 0; k < n; ++k) s += counts[k];
  return s;
}

// The radix passes of the top-k select (kSelectThreads threads, every thread calls):
// each pass histograms 8 bits of the keys that match the prefix chosen so far
// (warp-aggregated shared-memory counts: integer sums, so the order of the adds does not
// matter), then 256 threads find the boundary bin with a scan. When the boundary bin is
// taken whole, the prefix already splits the keys exactly and the passes stop. Leaves the
// boundary prefix, the mask of the bits it fixes and how many keys equal to it to take.
template <typename KeyAt>
__device__ __forceinline__ void radix_select_boundary(const KeyAt& key_at, int nc, int* hist, int* warp_counts,
                                                      uint32_t* s_prefix, int* s_remaining, int* s_whole,
                                                      uint32_t* prefix, uint32_t* mask, int* remaining) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int shift = 24; shift >= 0; shift -= 8) {
    if (threadIdx.x < 256) hist[threadIdx.x] = 0;
    __syncthreads();
    for (int base = 0; base < nc; base += kSelectThreads) {
      const int i = base + threadIdx.x;
      const uint32_t key = i < nc ? key_at(i) : 0u;
      const bool in = i < nc && (key & *mask) == *prefix;
      const uint32_t bin = (key >> shift) & 255u;
      const unsigned peers = __match_any_sync(0xffffffffu, in ? bin : 0xffffffffu);
      if (in && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
    }
    __syncthreads();
    // Thread t < 256 looks at bin 255 - t: counts of the bins from the top down.
    int count = 0, inclusive = 0;
    const int b = 255 - static_cast<int>(threadIdx.x);
    if (threadIdx.x < 256) {
      count = hist[b];
      inclusive = count;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int n = __shfl_up_sync(0xffffffffu, inclusive, off);
        if (lane >= off) inclusive += n;
      }
      if (lane == 31) warp_counts[warp] = inclusive;
    }
    __syncthreads();
    if (threadIdx.x < 256) {
      inclusive += shared_prefix(warp_counts, warp);
      const int above = inclusive - count;  // keys in higher bins
      // The boundary bin: the first from the top that reaches `remaining` (bin 0 when
      // none does, as the serial search).
      if (above < *remaining && (inclusive >= *remaining || b == 0)) {
        *s_prefix = *prefix | (static_cast<uint32_t>(b) << shift);
        *s_remaining = *remaining - above;
        *s_whole = count == *remaining - above;
      }
    }
    __syncthreads();
    *prefix = *s_prefix;
    *remaining = *s_remaining;
    *mask |= 255u << shift;
    const bool whole = *s_whole != 0;
    __syncthreads();
    if (whole) break;
  }
}

// Radix select of the topk largest scores in one block. Each pass histograms 8 bits
// of the keys that match the prefix chosen so far (warp-aggregated shared-memory
// counts: integer sums, so the order of the adds does not matter), then 256 threads
// find the boundary bin with a scan. When the boundary bin is taken whole, the prefix
// already splits the keys exactly and the passes stop. The output pass walks the
// scores in index order, 1024 at a time, and takes every key above the prefix plus
// the first `remaining` keys equal to it: the same set, in the same order, as
// indexer_topk_kernel.
__global__ void __launch_bounds__(kSelectThreads) indexer_radix_topk_kernel(IndexerLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (!*p.active || p.topk <= 0) return;
  constexpr int kWarps = kSelectThreads / 32;
  __shared__ int hist[256];
  __shared__ int warp_counts[kWarps];
  __shared__ int warp_counts2[kWarps];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining, s_whole;
  int nc = (*p.pos + 1) / p.ratio;
  if (nc > p.max_rows) nc = static_cast<int>(p.max_rows);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  uint32_t prefix = 0, mask = 0;
  int remaining = p.topk;
  radix_select_boundary([&](int i) { return order_key(p.scores[i]); }, nc, hist, warp_counts, &s_prefix,
                        &s_remaining, &s_whole, &prefix, &mask, &remaining);
  // Output: keys above the prefix, and the first `remaining` equal to it, in index order.
  int taken = 0, equal_seen = 0;
  for (int base = 0; base < nc && taken < p.topk; base += kSelectThreads) {
    const int i = base + threadIdx.x;
    const uint32_t key = i < nc ? (order_key(p.scores[i]) & mask) : 0u;
    const bool gt = i < nc && key > prefix;
    const bool eq = i < nc && key == prefix;
    const unsigned eq_bits = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_counts[warp] = __popc(eq_bits);
    __syncthreads();
    const int eq_rank = equal_seen + shared_prefix(warp_counts, warp) + __popc(eq_bits & lanes_below);
    const bool take = gt || (eq && eq_rank < remaining);
    const unsigned take_bits = __ballot_sync(0xffffffffu, take);
    if (lane == 0) warp_counts2[warp] = __popc(take_bits);
    __syncthreads();
    const int offset = taken + shared_prefix(warp_counts2, warp) + __popc(take_bits & lanes_below);
    if (take && offset < p.topk) p.selected[offset] = i;
    equal_seen += shared_prefix(warp_counts, kWarps);
    taken += shared_prefix(warp_counts2, kWarps);
    __syncthreads();
  }
}

// ---------------------------------------------------------------- current indexer kernels

constexpr int kScoreThreads = 256;
constexpr int kScoreWarps = kScoreThreads / 32;
constexpr int kScoreHeadsPerWarp = 8;       // the most heads one warp holds in registers
constexpr int kScoreMaxHeads = kScoreWarps * kScoreHeadsPerWarp;
constexpr int kScoreTileRows = 32;          // rows whose relu'd products meet in shared memory at once
constexpr int kScoreMinRowsPerBlock = 8;
constexpr int kScoreMaxBlocks = 264;        // two per SM on the H200

// Row c's relu'd products with this warp's heads (q slices in registers, 128-dim rows):
// each head's dot product as the previous kernel's (lane l sums its values l, l + 32,
// l + 64, l + 96 in order, then warp_sum's pairings through warp_reduce_scatter); lanes
// 4g (g < heads of the warp) write head g's max(0, dot) into `relu`.
__device__ __forceinline__ void score_row_heads(const float (&qv)[kScoreHeadsPerWarp][4], const float* row,
                                                int lane, int warp_heads, float* relu) {
  const float r0 = row[lane], r1 = row[lane + 32], r2 = row[lane + 64], r3 = row[lane + 96];
  float sums[kScoreHeadsPerWarp];
#pragma unroll
  for (int g = 0; g < kScoreHeadsPerWarp; ++g) {
    float d = 0.0f;
    d += qv[g][0] * r0;
    d += qv[g][1] * r1;
    d += qv[g][2] * r2;
    d += qv[g][3] * r3;
    sums[g] = d;
  }
  const float d = warp_reduce_scatter<kScoreHeadsPerWarp>(sums, lane);
  const int g = lane >> kReduceScatterShift<kScoreHeadsPerWarp>;
  if ((lane & 3) == 0 && g < warp_heads) relu[g] = fmaxf(d, 0.0f);
}

// Scores of the visible rows, spread evenly over the grid (at least kScoreMinRowsPerBlock
// a block). Warp w holds heads [w * heads / 8, (w + 1) * heads / 8) in registers and
// takes every row of the block; per tile of rows the relu'd products meet in shared
// memory and thread r sums row r's over the heads in head order with the scaled weights:
// indexer_score_rows_kernel's expressions in its order, so the same scores.
__global__ void __launch_bounds__(kScoreThreads) indexer_score_heads_kernel(IndexerLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (!*p.active) return;
  int64_t nc = (*p.pos + 1) / p.ratio;
  if (nc > p.max_rows) nc = p.max_rows;
  const int64_t per_block =
      max(static_cast<int64_t>(kScoreMinRowsPerBlock), (nc + gridDim.x - 1) / static_cast<int64_t>(gridDim.x));
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * per_block;
  if (c0 >= nc) return;
  const int64_t c1 = min(nc, c0 + per_block);
  __shared__ float s_w[kScoreMaxHeads];
  __shared__ float s_relu[kScoreTileRows][kScoreMaxHeads + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warp_heads = p.heads / kScoreWarps;
  const int head0 = warp * warp_heads;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(p.head_dim))) *
                      static_cast<float>(1.0 / sqrt(static_cast<double>(p.heads)));
  if (threadIdx.x < p.heads) s_w[threadIdx.x] = p.weights[threadIdx.x] * scale;
  float qv[kScoreHeadsPerWarp][4];
#pragma unroll
  for (int g = 0; g < kScoreHeadsPerWarp; ++g) {
#pragma unroll
    for (int k = 0; k < 4; ++k) qv[g][k] = g < warp_heads ? p.q[(head0 + g) * 128 + lane + 32 * k] : 0.0f;
  }
  for (int64_t t0 = c0; t0 < c1; t0 += kScoreTileRows) {
    const int tile = static_cast<int>(min(static_cast<int64_t>(kScoreTileRows), c1 - t0));
    int r = 0;
    for (; r + 2 <= tile; r += 2) {
      score_row_heads(qv, p.rows + (t0 + r) * 128, lane, warp_heads, &s_relu[r][head0]);
      score_row_heads(qv, p.rows + (t0 + r + 1) * 128, lane, warp_heads, &s_relu[r + 1][head0]);
    }
    if (r < tile) score_row_heads(qv, p.rows + (t0 + r) * 128, lane, warp_heads, &s_relu[r][head0]);
    __syncthreads();
    if (threadIdx.x < tile) {
      float score = 0.0f;
      for (int h = 0; h < p.heads; ++h) score += s_relu[threadIdx.x][h] * s_w[h];
      p.scores[t0 + threadIdx.x] = score;
    }
    __syncthreads();
  }
}

// Exclusive prefix sum over the kSelectThreads threads of the block (integers, so the
// order of the additions does not matter); `warp_sums` holds 32 ints of shared memory.
__device__ __forceinline__ int block_exclusive_scan_warps(int v, int* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inclusive = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, inclusive, off);
    if (lane >= off) inclusive += n;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int w = lane < kSelectThreads / 32 ? warp_sums[lane] : 0;
    int winc = w;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, winc, off);
      if (lane >= off) winc += n;
    }
    if (lane < kSelectThreads / 32) warp_sums[lane] = winc - w;
  }
  __syncthreads();
  const int result = warp_sums[warp] + inclusive - v;
  __syncthreads();  // warp_sums free for the next scan
  return result;
}

// indexer_radix_topk_kernel with the keys read once into shared memory (every pass and
// the output read them there), and the output written by contiguous chunks: each thread
// counts its chunk's keys above the prefix and equal to it, two block scans give the
// equal keys it takes (the first `remaining` in index order) and where its chunk's
// selection starts. The same selection in the same order.
__global__ void __launch_bounds__(kSelectThreads) indexer_shared_topk_kernel(IndexerLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (!*p.active || p.topk <= 0) return;
  extern __shared__ uint32_t keys[];  // [max_rows]
  __shared__ int hist[256];
  __shared__ int warp_counts[kSelectThreads / 32];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining, s_whole;
  int nc = (*p.pos + 1) / p.ratio;
  if (nc > p.max_rows) nc = static_cast<int>(p.max_rows);
  for (int i = threadIdx.x; i < nc; i += kSelectThreads) keys[i] = order_key(p.scores[i]);
  __syncthreads();
  uint32_t prefix = 0, mask = 0;
  int remaining = p.topk;
  radix_select_boundary([&](int i) { return keys[i]; }, nc, hist, warp_counts, &s_prefix, &s_remaining, &s_whole,
                        &prefix, &mask, &remaining);
  const int chunk = (nc + kSelectThreads - 1) / kSelectThreads;
  const int begin = min(nc, static_cast<int>(threadIdx.x) * chunk);
  const int end = min(nc, begin + chunk);
  int gt = 0, eq = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = keys[i] & mask;
    gt += key > prefix;
    eq += key == prefix;
  }
  const int eq_before = block_exclusive_scan_warps(eq, warp_counts);
  const int take_eq = max(0, min(eq, remaining - eq_before));
  int offset = block_exclusive_scan_warps(gt + take_eq, warp_counts);
  int taken_eq = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = keys[i] & mask;
    const bool take = key > prefix || (key == prefix && taken_eq < take_eq);
    if (take) {
      if (key == prefix) ++taken_eq;
      if (offset < p.topk) p.selected[offset] = i;
      ++offset;
    }
  }
}

int pow2_threads(int n) {
  int t = 32;
  while (t < n && t < 1024) t *= 2;
  return t;
}

}  // namespace

Status indexer_init() {
  static const Status status = [] {
    DS4_RETURN_IF_ERROR(cuda_status(
        cudaFuncSetAttribute(indexer_score_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             96 * 1024),
        "raising the indexer kernel's shared memory limit"));
    DS4_RETURN_IF_ERROR(cuda_status(cudaFuncSetAttribute(indexer_score_rows_kernel,
                                                         cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024),
                                    "raising the indexer row-scoring kernel's shared memory limit"));
    cudaFuncAttributes attributes{};
    DS4_RETURN_IF_ERROR(cuda_status(cudaFuncGetAttributes(&attributes, indexer_shared_topk_kernel),
                                    "reading the indexer select kernel's attributes"));
    const int room = max_shared_per_block() - static_cast<int>(attributes.sharedSizeBytes);
    return cuda_status(cudaFuncSetAttribute(indexer_shared_topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            std::max(room, 0)),
                       "raising the indexer select kernel's shared memory limit");
  }();
  return status;
}

// Static shared memory of indexer_shared_topk_kernel, bounded from above.
constexpr int64_t kSharedTopkStatic = sizeof(int) * (256 + kSelectThreads / 32 + 4) + 256;

bool indexer_current_scoring_applies(const IndexerLaunch& p) {
  return p.heads >= 8 && p.heads % 8 == 0 && p.heads <= kScoreMaxHeads && p.head_dim == 128 && p.ratio > 0;
}

bool indexer_shared_select_applies(const IndexerLaunch& p) {
  return p.max_rows > 0 && p.ratio > 0 &&
         static_cast<int64_t>(sizeof(uint32_t)) * p.max_rows + kSharedTopkStatic <= max_shared_per_block();
}

Status launch_compressor_update(const CompressorLaunch& p, cudaStream_t stream) {
  if (p.ratio <= 0 || p.d <= 0 || p.state_slots < (p.ratio == 4 ? 8 : p.ratio)) {
    return Status::Error("compressor: invalid ratio, row length or state size");
  }
  const int w = p.d * (p.ratio == 4 ? 2 : 1);
  const size_t shared = sizeof(float) * (p.d + 32 + p.d / 32 + 1);
  launch_kernel(compressor_kernel, 1, pow2_threads(w), shared, stream, p);
  return cuda_status(cudaGetLastError(), "compressor launch");
}

Status launch_indexer_gate(const int32_t* pos, int ratio, int topk, int32_t* flag,
                           cudaStream_t stream) {
  launch_kernel(indexer_gate_kernel, 1, 1, 0, stream, pos, ratio, topk, flag);
  return cuda_status(cudaGetLastError(), "indexer gate launch");
}

Status launch_indexer_select(const IndexerLaunch& p, cudaStream_t stream) {
  const size_t shared = sizeof(float) * (p.heads * p.head_dim + p.heads);
  if (shared > 96 * 1024) return Status::Error("indexer: query does not fit in shared memory");
  DS4_RETURN_IF_ERROR(indexer_init());
  const int64_t blocks = std::min<int64_t>((p.max_rows + 7) / 8, 1056);
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(blocks, 1));
  if (p.baseline_kernels) {
    launch_kernel(indexer_score_kernel, grid, 256, shared, stream, p);
    DS4_CUDA_TRY(cudaGetLastError());
    launch_kernel(indexer_topk_kernel, 1, kSelectThreads, 0, stream, p);
    return cuda_status(cudaGetLastError(), "indexer top-k launch");
  }
  static const bool previous_by_env = [] {
    const char* v = std::getenv("DS4_CUDA_INDEXER_KERNELS");
    return v != nullptr && std::strcmp(v, "previous") == 0;
  }();
  const bool previous = p.previous_kernels || previous_by_env;
  if (!previous && indexer_current_scoring_applies(p)) {
    const int64_t blocks = std::min<int64_t>((p.max_rows + kScoreMinRowsPerBlock - 1) / kScoreMinRowsPerBlock,
                                             kScoreMaxBlocks);
    launch_kernel(indexer_score_heads_kernel, static_cast<unsigned>(std::max<int64_t>(blocks, 1)), kScoreThreads, 0,
                  stream, p);
  } else {
    launch_kernel(indexer_score_rows_kernel, grid, 256, shared, stream, p);
  }
  DS4_CUDA_TRY(cudaGetLastError());
  if (!previous && !p.previous_select && indexer_shared_select_applies(p)) {
    launch_kernel(indexer_shared_topk_kernel, 1, kSelectThreads, sizeof(uint32_t) * p.max_rows, stream, p);
  } else {
    launch_kernel(indexer_radix_topk_kernel, 1, kSelectThreads, 0, stream, p);
  }
  return cuda_status(cudaGetLastError(), "indexer top-k launch");
}

}  // namespace ds4
