#include "cuda/prefill_attention.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/device_limits.h"
#include "cuda/mma.cuh"
#include "cuda/row_post.cuh"

namespace ds4 {
namespace {

using cuda_detail::mma_f16;

using namespace cuda_detail;

constexpr int kSelectThreads = 1024;
constexpr int kTileRows = 32;        // attention rows staged in shared memory at a time
constexpr int kMaxPerLane = 16;      // head_dim / 32 <= 16
constexpr int kMaxHeadsPerBlock = 16;

int pow2_threads(int n) {
  int t = 32;
  while (t < n && t < 1024) t *= 2;
  return t;
}

// ---------------------------------------------------------------------------
// Compressor.

// (k, z + ape) of position `pos`, channel `ch`: from the chunk's projections when the
// position is inside the chunk, otherwise from the state written by earlier chunks.
struct KZ {
  float k, z;
};

__device__ __forceinline__ KZ compressor_value(const CompressorChunkLaunch& p, int w, int pos, int ch) {
  if (pos >= p.pos0) {
    const int64_t at = static_cast<int64_t>(pos - p.pos0) * p.kz_stride + ch;
    return {p.k[at], p.z[at] + p.ape[(pos % p.ratio) * w + ch]};
  }
  const int64_t s = static_cast<int64_t>(pos % p.state_slots) * w + ch;
  return {p.state_k[s], p.state_z[s]};
}

// Block (b, g) pools channels g*blockDim.x .. of row c = c_begin + b with
// compressor_kernel's arithmetic (same order, same rounding) and leaves the pooled values
// in the row; compressor_chunk_post_kernel then post-processes the row in place.
__global__ void compressor_chunk_pool_kernel(CompressorChunkLaunch p, int c_begin) {
  const int coff = p.ratio == 4 ? 2 : 1;
  const int w = coff * p.d;
  const int c = c_begin + static_cast<int>(blockIdx.x);
  const int j = static_cast<int>(blockIdx.y * blockDim.x + threadIdx.x);
  if (j < p.d) {
    float mx = -INFINITY;
    for (int half = 0; half < coff; ++half) {
      const int first = coff == 2 ? (c - 1 + half) * p.ratio : c * p.ratio;
      if (first < 0) continue;
      const int ch = coff == 2 ? half * p.d + j : j;
      for (int t = 0; t < p.ratio; ++t) mx = fmaxf(mx, compressor_value(p, w, first + t, ch).z);
    }
    float sum = 0.0f;
    for (int half = 0; half < coff; ++half) {
      const int first = coff == 2 ? (c - 1 + half) * p.ratio : c * p.ratio;
      if (first < 0) continue;
      const int ch = coff == 2 ? half * p.d + j : j;
      for (int t = 0; t < p.ratio; ++t) {
        const float e = static_cast<float>(
            exp(static_cast<double>(compressor_value(p, w, first + t, ch).z - mx)));
        sum = __fadd_rn(sum, e);
      }
    }
    float pooled = 0.0f;
    for (int half = 0; half < coff; ++half) {
      const int first = coff == 2 ? (c - 1 + half) * p.ratio : c * p.ratio;
      if (first < 0) continue;
      const int ch = coff == 2 ? half * p.d + j : j;
      for (int t = 0; t < p.ratio; ++t) {
        const KZ kz = compressor_value(p, w, first + t, ch);
        const float e = static_cast<float>(exp(static_cast<double>(kz.z - mx)));
        pooled = __fadd_rn(pooled, __fmul_rn(kz.k, __fdiv_rn(e, sum)));
      }
    }
    p.rows[static_cast<int64_t>(c) * p.d + j] = pooled;
  }
}

// Block b post-processes row c = c_begin + b in place (norm, RoPE, QAT) with the block
// size of compressor_kernel, so its reductions add in the same order.
__global__ void compressor_chunk_post_kernel(CompressorChunkLaunch p, int c_begin) {
  extern __shared__ float shared[];
  float* v = shared;
  float* scratch = shared + p.d;
  const int c = c_begin + static_cast<int>(blockIdx.x);
  float* row = p.rows + static_cast<int64_t>(c) * p.d;
  for (int j = threadIdx.x; j < p.d; j += blockDim.x) v[j] = row[j];
  __syncthreads();
  post_process_row(v, p.d, true, p.norm_weight, p.eps, p.rope_dim, p.rope_freqs,
                   static_cast<float>(c * p.ratio), false, static_cast<int>(p.qat), scratch);
  for (int j = threadIdx.x; j < p.d; j += blockDim.x) row[j] = v[j];
}

// Writes (k, z + ape) of the chunk's last min(n, state_slots) positions into their slots.
__global__ void compressor_chunk_state_kernel(CompressorChunkLaunch p, int first_pos) {
  const int coff = p.ratio == 4 ? 2 : 1;
  const int w = coff * p.d;
  const int pos = first_pos + static_cast<int>(blockIdx.x);
  const int64_t at = static_cast<int64_t>(pos - p.pos0) * p.kz_stride;
  const int64_t slot = static_cast<int64_t>(pos % p.state_slots) * w;
  const int phase = pos % p.ratio;
  for (int j = threadIdx.x; j < w; j += blockDim.x) {
    p.state_k[slot + j] = p.k[at + j];
    p.state_z[slot + j] = p.z[at + j] + p.ape[phase * w + j];
  }
}

// ---------------------------------------------------------------------------
// Indexer.

// Block (64 tokens, 64 rows), thread (4 tokens, 4 rows): bit-identical to
// indexer_score_kernel, where lane l of a warp sums q[i] * row[i] over i = l, l+32, ...
// (one fused multiply-add each), warp_sum adds the lanes pairwise (l and l^16, then ^8,
// ^4, ^2, ^1), and the heads are accumulated in order with fused multiply-adds. Here
// one thread forms the 32 lane sums in the depth-first order of that tree (lane
// bit_reverse(i) at step i) and adds them with a five-entry stack.
constexpr int kIndexTokens = 64;
constexpr int kIndexRows = 64;
constexpr int kIndexThreads = 256;
constexpr int kIndexMaxPerLane = 4;  // head_dim <= 128
constexpr int kIndexLd = 32 * kIndexMaxPerLane + 2;  // floats per staged row or query

__host__ __device__ constexpr int bit_reverse5(int i) {
  return ((i & 1) << 4) | ((i & 2) << 2) | (i & 4) | ((i & 8) >> 2) | ((i & 16) >> 4);
}

__global__ void __launch_bounds__(kIndexThreads, 2) indexer_chunk_score_kernel(IndexerChunkLaunch p,
                                                                            int64_t stride) {
  extern __shared__ float shared[];
  // Dims are stored lane-major (dim lane + 32k at 4*lane + k), so that the values one
  // summation lane needs come in float2 pairs; rows padded by 2 floats so that the 16
  // tokens of a warp read 16 different bank pairs (one wavefront).
  constexpr int ld = kIndexLd;
  float* rows = shared;                    // [kIndexRows][ld]
  float* qs = shared + kIndexRows * ld;    // [kIndexTokens][ld], one head at a time
  const int t0 = blockIdx.y * kIndexTokens;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kIndexRows;
  const int t_last = min(p.n, t0 + kIndexTokens) - 1;
  const int64_t nc_last_all = (static_cast<int64_t>(p.pos0) + t_last + 1) / p.ratio;
  const int64_t nc_last = (nc_last_all < p.max_rows ? nc_last_all : p.max_rows);
  if (nc_last_all <= p.topk || c0 >= nc_last) return;  // no open gate or no visible row here
  const int per = p.head_dim / 32;
  for (int i = threadIdx.x; i < kIndexRows * p.head_dim; i += blockDim.x) {
    const int r = i / p.head_dim, col = i - r * p.head_dim;
    const int64_t c = c0 + r;
    rows[r * ld + 4 * (col & 31) + (col >> 5)] = c < nc_last ? p.rows[c * p.head_dim + col] : 0.0f;
  }
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(p.head_dim))) *
                      static_cast<float>(1.0 / sqrt(static_cast<double>(p.heads)));
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  // The running scores live in shared memory (entry (a, b) of thread i at
  // (4a + b) * kIndexThreads + i), which leaves the registers to the summation tree.
  float* score = qs + kIndexTokens * ld;
#pragma unroll
  for (int ab = 0; ab < 16; ++ab) score[ab * kIndexThreads + threadIdx.x] = 0.0f;
  for (int h = 0; h < p.heads; ++h) {
    __syncthreads();  // the previous head's queries are no longer read
    {
      // 64 tokens x head_dim/4 float4 values, at most 8 per thread: all loads first.
      const int vec = p.head_dim / 4;
      float4 v[kIndexTokens * kIndexMaxPerLane * 8 / kIndexThreads];
#pragma unroll
      for (int u = 0; u < kIndexTokens * kIndexMaxPerLane * 8 / kIndexThreads; ++u) {
        const int i = threadIdx.x + u * kIndexThreads;
        const int tt = i / vec, t = t0 + tt;
        v[u] = i < kIndexTokens * vec && t < p.n
                   ? __ldg(reinterpret_cast<const float4*>(p.q + (static_cast<int64_t>(t) * p.heads + h) * p.head_dim) +
                           (i - tt * vec))
                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kIndexTokens * kIndexMaxPerLane * 8 / kIndexThreads; ++u) {
        const int i = threadIdx.x + u * kIndexThreads;
        if (i >= kIndexTokens * vec) continue;
        const int tt = i / vec, col = 4 * (i - tt * vec);
        float* dst = qs + tt * ld;
        dst[4 * (col & 31) + (col >> 5)] = v[u].x;
        dst[4 * ((col + 1) & 31) + ((col + 1) >> 5)] = v[u].y;
        dst[4 * ((col + 2) & 31) + ((col + 2) >> 5)] = v[u].z;
        dst[4 * ((col + 3) & 31) + ((col + 3) >> 5)] = v[u].w;
      }
    }
    __syncthreads();
    float v[4][4];
    float stack[5][4][4];
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int lane = bit_reverse5(i);
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int b = 0; b < 4; ++b) v[a][b] = 0.0f;
      }
      // Lane `lane`'s values of dims lane + 32k in pairs (k = 0, 1 then 2, 3): each
      // v[a][b] still adds k = 0, 1, ... in order.
#pragma unroll
      for (int k2 = 0; k2 < kIndexMaxPerLane; k2 += 2) {
        if (k2 < per) {
          float2 r2[4], q2[4];
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            r2[b] = *reinterpret_cast<const float2*>(rows + (ty + 16 * b) * ld + 4 * lane + k2);
          }
#pragma unroll
          for (int a = 0; a < 4; ++a) {
            q2[a] = *reinterpret_cast<const float2*>(qs + (tx + 16 * a) * ld + 4 * lane + k2);
          }
#pragma unroll
          for (int a = 0; a < 4; ++a) {
#pragma unroll
            for (int b = 0; b < 4; ++b) v[a][b] = fmaf(q2[a].x, r2[b].x, v[a][b]);
          }
          if (k2 + 1 < per) {
#pragma unroll
            for (int a = 0; a < 4; ++a) {
#pragma unroll
              for (int b = 0; b < 4; ++b) v[a][b] = fmaf(q2[a].y, r2[b].y, v[a][b]);
            }
          }
        }
      }
      // Leaf i closes one subtree per trailing one bit of i.
#pragma unroll
      for (int level = 0; level < 5; ++level) {
        if (((i >> level) & 1) == 0) {
#pragma unroll
          for (int a = 0; a < 4; ++a) {
#pragma unroll
            for (int b = 0; b < 4; ++b) stack[level][a][b] = v[a][b];
          }
          break;
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
#pragma unroll
          for (int b = 0; b < 4; ++b) v[a][b] = stack[level][a][b] + v[a][b];
        }
      }
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int t = t0 + tx + 16 * a;
      const float w = t < p.n ? p.weights[static_cast<int64_t>(t) * p.heads + h] * scale : 0.0f;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        float& sc = score[(4 * a + b) * kIndexThreads + threadIdx.x];
        sc = fmaf(fmaxf(v[a][b], 0.0f), w, sc);
      }
    }
  }
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int t = t0 + tx + 16 * a;
    if (t >= p.n) continue;
    int64_t nc = (static_cast<int64_t>(p.pos0) + t + 1) / p.ratio;
    if (nc <= p.topk) continue;
    if (nc > p.max_rows) nc = p.max_rows;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int64_t c = c0 + ty + 16 * b;
      if (c < nc) p.scores[static_cast<int64_t>(t) * stride + c] = score[(4 * a + b) * kIndexThreads + threadIdx.x];
    }
  }
}

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

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

// Block t: the gate flag of token t and, when open, its top-k (radix select on the
// order-preserving keys; every larger key and the lowest-index equal ones, in row order).
__global__ void __launch_bounds__(kSelectThreads) indexer_chunk_topk_kernel(IndexerChunkLaunch p,
                                                                            int64_t stride) {
  __shared__ int hist[256];
  __shared__ int scan_buf[kSelectThreads];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  const int t = blockIdx.x;
  const int pos = p.pos0 + t;
  const bool open = ((pos + 1) / p.ratio) > p.topk;
  if (threadIdx.x == 0) p.active[t] = open ? 1 : 0;
  if (!open) return;
  int nc = (pos + 1) / p.ratio;
  if (nc > p.max_rows) nc = static_cast<int>(p.max_rows);
  const float* scores = p.scores + static_cast<int64_t>(t) * stride;
  int32_t* selected = p.selected + static_cast<int64_t>(t) * p.topk;
  uint32_t prefix = 0, mask = 0;
  int remaining = p.topk;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < nc; i += blockDim.x) {
      const uint32_t key = order_key(scores[i]);
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
  const int chunk = (nc + kSelectThreads - 1) / kSelectThreads;
  const int begin = threadIdx.x * chunk;
  const int end = min(nc, begin + chunk);
  int gt = 0, eq = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = order_key(scores[i]);
    gt += key > prefix;
    eq += key == prefix;
  }
  const int eq_before = block_exclusive_scan(eq, scan_buf);
  const int take_eq = max(0, min(eq, remaining - eq_before));
  int offset = block_exclusive_scan(gt + take_eq, scan_buf);
  int taken_eq = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = order_key(scores[i]);
    if (key > prefix || (key == prefix && taken_eq < take_eq)) {
      if (key == prefix) ++taken_eq;
      if (offset < p.topk) selected[offset] = i;
      ++offset;
    }
  }
}

// ---------------------------------------------------------------------------
// Attention.

// Visible rows of token t: `nraw` raw rows (positions pos-nraw+1 .. pos), then `ncomp`
// compressed rows (all of the first ncomp, or the token's selection).
struct ChunkVisible {
  int pos, nraw, ncomp;
  const int32_t* selection;  // nullptr: rows 0..ncomp-1
};

__device__ __forceinline__ ChunkVisible chunk_visible(const AttentionChunkLaunch& p, int t) {
  ChunkVisible v;
  v.pos = p.pos0 + t;
  v.nraw = min(v.pos + 1, p.window);
  v.ncomp = 0;
  v.selection = nullptr;
  if (p.ratio == 4) {
    const bool sel = p.active && p.active[t] != 0;
    v.ncomp = sel ? p.topk : (v.pos + 1) / 4;
    if (sel) v.selection = p.selected + static_cast<int64_t>(t) * p.topk;
  } else if (p.ratio > 0) {
    v.ncomp = (v.pos + 1) / p.ratio;
  }
  if (v.ncomp > p.max_comp_rows) v.ncomp = static_cast<int>(p.max_comp_rows);
  return v;
}

__device__ __forceinline__ const float* chunk_row(const AttentionChunkLaunch& p, const ChunkVisible& v,
                                                  int r) {
  if (r < v.nraw) {
    const int pos = v.pos - v.nraw + 1 + r;
    if (pos >= p.pos0) return p.chunk_kv + static_cast<int64_t>(pos - p.pos0) * p.head_dim;
    return p.ring + static_cast<int64_t>(pos % p.ring_slots) * p.head_dim;
  }
  const int c = v.selection ? v.selection[r - v.nraw] : r - v.nraw;
  return p.comp + static_cast<int64_t>(c) * p.head_dim;
}

// Sum over the warp of v[j] for every j < 32 with warp_sum's pairing (lanes l and
// l^16, then ^8, ...); lane l returns the total of index l.
template <int kOff>
__device__ __forceinline__ void transpose_sum_step(float (&v)[32], int lane) {
  const bool upper = (lane & kOff) != 0;
#pragma unroll
  for (int j = 0; j < kOff; ++j) {
    const float send = upper ? v[j] : v[j + kOff];
    const float keep = upper ? v[j + kOff] : v[j];
    v[j] = keep + __shfl_xor_sync(0xffffffffu, send, kOff);
  }
}

__device__ __forceinline__ float warp_transpose_sum(float (&v)[32]) {
  const int lane = threadIdx.x & 31;
  transpose_sum_step<16>(v, lane);
  transpose_sum_step<8>(v, lane);
  transpose_sum_step<4>(v, lane);
  transpose_sum_step<2>(v, lane);
  transpose_sum_step<1>(v, lane);
  return v[0];
}

// Block (token t, head group): each warp owns kHeadsPerWarp heads; rows are staged in
// shared memory kTileRows at a time and used by every head of the block, with an online
// softmax (running max, sum and output per head). Lane l holds dims l + 32k.
template <int kHeadsPerWarp>
__global__ void attention_chunk_kernel(AttentionChunkLaunch p, int heads_per_block) {
  extern __shared__ float tile[];  // [kTileRows][head_dim]
  const int t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = p.head_dim;
  const int per = D / 32;
  const int h0 = blockIdx.y * heads_per_block + warp * kHeadsPerWarp;
  const ChunkVisible vis = chunk_visible(p, t);
  const int total = vis.nraw + vis.ncomp;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));

  float q[kHeadsPerWarp][kMaxPerLane];
  float acc[kHeadsPerWarp][kMaxPerLane];
  float m[kHeadsPerWarp], l[kHeadsPerWarp];
#pragma unroll
  for (int hh = 0; hh < kHeadsPerWarp; ++hh) {
    const float* qh = p.q + (static_cast<int64_t>(t) * p.heads + h0 + hh) * D;
#pragma unroll
    for (int k = 0; k < kMaxPerLane; ++k) {
      q[hh][k] = k < per ? qh[lane + 32 * k] : 0.0f;
      acc[hh][k] = 0.0f;
    }
    m[hh] = -INFINITY;
    l[hh] = 0.0f;
  }

  for (int r0 = 0; r0 < total; r0 += kTileRows) {
    const int nr = min(kTileRows, total - r0);
    __syncthreads();  // the previous tile is no longer read
    const int vec = D / 4;
    for (int i = threadIdx.x; i < nr * vec; i += blockDim.x) {
      const int r = i / vec, c4 = i - r * vec;
      reinterpret_cast<float4*>(tile + r * D)[c4] =
          reinterpret_cast<const float4*>(chunk_row(p, vis, r0 + r))[c4];
    }
    __syncthreads();
    // Scores: each staged value is loaded once for all the warp's heads.
    float part[kHeadsPerWarp][32];
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      float d[kHeadsPerWarp];
#pragma unroll
      for (int hh = 0; hh < kHeadsPerWarp; ++hh) d[hh] = 0.0f;
      if (j < nr) {
        const float* row = tile + j * D;
#pragma unroll
        for (int k = 0; k < kMaxPerLane; ++k) {
          if (k < per) {
            const float x = row[lane + 32 * k];
#pragma unroll
            for (int hh = 0; hh < kHeadsPerWarp; ++hh) d[hh] = fmaf(q[hh][k], x, d[hh]);
          }
        }
      }
#pragma unroll
      for (int hh = 0; hh < kHeadsPerWarp; ++hh) part[hh][j] = d[hh];
    }
    // Online softmax: lane j holds row r0 + j's weight.
    float e[kHeadsPerWarp];
#pragma unroll
    for (int hh = 0; hh < kHeadsPerWarp; ++hh) {
      const float dot = warp_transpose_sum(part[hh]);  // every lane takes part in the shuffles
      const float s = lane < nr ? dot * scale : -INFINITY;
      const float m_new = fmaxf(m[hh], warp_max(s));
      const float corr = expf(m[hh] - m_new);  // 0 on the first tile (m = -inf)
      e[hh] = lane < nr ? expf(s - m_new) : 0.0f;
      l[hh] = l[hh] * corr + warp_sum(e[hh]);
      m[hh] = m_new;
#pragma unroll
      for (int k = 0; k < kMaxPerLane; ++k) acc[hh][k] *= corr;
    }
    for (int j = 0; j < nr; ++j) {
      float ej[kHeadsPerWarp];
#pragma unroll
      for (int hh = 0; hh < kHeadsPerWarp; ++hh) ej[hh] = __shfl_sync(0xffffffffu, e[hh], j);
      const float* row = tile + j * D;
#pragma unroll
      for (int k = 0; k < kMaxPerLane; ++k) {
        if (k < per) {
          const float x = row[lane + 32 * k];
#pragma unroll
          for (int hh = 0; hh < kHeadsPerWarp; ++hh) acc[hh][k] = fmaf(ej[hh], x, acc[hh][k]);
        }
      }
    }
  }

  // Sink, normalisation, inverse RoPE of the tail at the query position.
  __syncthreads();
#pragma unroll
  for (int hh = 0; hh < kHeadsPerWarp; ++hh) {
    const int h = h0 + hh;
    const float sink = p.sinks[h];
    const float mf = fmaxf(m[hh], sink);
    const float f = m[hh] == -INFINITY ? 0.0f : expf(m[hh] - mf);
    const float z = l[hh] * f + expf(sink - mf);
    float* o = tile + (warp * kHeadsPerWarp + hh) * D;
#pragma unroll
    for (int k = 0; k < kMaxPerLane; ++k) {
      if (k < per) o[lane + 32 * k] = acc[hh][k] * f / z;
    }
    __syncwarp();
    float* tail = o + D - p.rope_dim;
    for (int j = lane; j < p.rope_dim / 2; j += 32) {
      rope_pair(&tail[2 * j], &tail[2 * j + 1], static_cast<float>(vis.pos), p.rope_freqs[j], true);
    }
    __syncwarp();
    float* out = p.out + (static_cast<int64_t>(t) * p.heads + h) * D;
    for (int i = lane; i < D; i += 32) out[i] = o[i];
  }
}

// Tensor-core variant for head_dim 512 and groups of 16 heads: block (token t, 16 heads),
// 4 warps. Rows are staged as f16 (32 at a time); scores S = Q . K^T with Q split into
// f16 high and low parts (two m16n8k16 products, f32 accumulation), an online softmax in
// f32, then O += P . V with P split the same way. Warp w owns dims w*128 .. w*128+127 of
// the output (16 tiles of 8 dims for 16 heads).
constexpr int kMmaHeads = 16;
constexpr int kMmaDim = 512;
constexpr int kMmaThreads = 128;
constexpr int kMmaLd = kMmaDim + 8;     // halves per staged row (padded against bank conflicts)
constexpr int kMmaPld = kTileRows + 8;  // halves per row of P

struct MmaShared {
  __half q_hi[kMmaHeads][kMmaLd];
  __half q_lo[kMmaHeads][kMmaLd];
  __half rows[kTileRows][kMmaLd];  // reused as float o[16][512] at the end
  float s[kMmaHeads][kTileRows + 1];
  __half p_hi[kMmaHeads][kMmaPld];
  __half p_lo[kMmaHeads][kMmaPld];
  float corr[kMmaHeads];
  float m[kMmaHeads];
  float l[kMmaHeads];
};

__device__ __forceinline__ uint32_t load_half2(const __half* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ __forceinline__ uint32_t pack_halves(__half lo, __half hi) {
  return static_cast<uint32_t>(__half_as_ushort(lo)) | (static_cast<uint32_t>(__half_as_ushort(hi)) << 16);
}

__global__ void __launch_bounds__(kMmaThreads) attention_chunk_mma_kernel(AttentionChunkLaunch p) {
  extern __shared__ __align__(16) unsigned char raw_shared[];
  MmaShared& sh = *reinterpret_cast<MmaShared*>(raw_shared);
  const int t = blockIdx.x;
  const int h0 = blockIdx.y * kMmaHeads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const ChunkVisible vis = chunk_visible(p, t);
  const int total = vis.nraw + vis.ncomp;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(kMmaDim)));

  const float* qt = p.q + (static_cast<int64_t>(t) * p.heads + h0) * kMmaDim;
  for (int i = threadIdx.x; i < kMmaHeads * kMmaDim; i += kMmaThreads) {
    const float x = qt[i];
    const __half hi = __float2half_rn(x);
    sh.q_hi[i / kMmaDim][i % kMmaDim] = hi;
    sh.q_lo[i / kMmaDim][i % kMmaDim] = __float2half_rn(x - __half2float(hi));
  }
  float m_run[4], l_run[4];  // this warp's softmax heads 4*warp .. 4*warp+3
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m_run[i] = -INFINITY;
    l_run[i] = 0.0f;
  }
  float acc[16][4];
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
  }

  for (int r0 = 0; r0 < total; r0 += kTileRows) {
    const int nr = min(kTileRows, total - r0);
    __syncthreads();  // the previous tile, P and corr are no longer read
    // Thread i converts float4 column i of every row (kMmaThreads == kMmaDim / 4); the
    // loads of a batch are all issued before the first store. Rows past the end stay zero.
    static_assert(kMmaThreads == kMmaDim / 4, "one float4 column per thread");
    constexpr int kBatch = 16;
#pragma unroll
    for (int j0 = 0; j0 < kTileRows; j0 += kBatch) {
      float4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        v[u] = j0 + u < nr ? __ldg(reinterpret_cast<const float4*>(chunk_row(p, vis, r0 + j0 + u)) + threadIdx.x)
                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        __half2* dst = reinterpret_cast<__half2*>(&sh.rows[j0 + u][4 * threadIdx.x]);
        dst[0] = __floats2half2_rn(v[u].x, v[u].y);
        dst[1] = __floats2half2_rn(v[u].z, v[u].w);
      }
    }
    __syncthreads();
    // Scores: warp w, rows 8w .. 8w+7, all 16 heads.
    {
      float s_acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const __half* brow = sh.rows[8 * warp + g];
#pragma unroll 4
      for (int k0 = 0; k0 < kMmaDim; k0 += 16) {
        const uint32_t b0 = load_half2(brow + k0 + 2 * c);
        const uint32_t b1 = load_half2(brow + k0 + 2 * c + 8);
        mma_f16(s_acc, load_half2(&sh.q_hi[g][k0 + 2 * c]), load_half2(&sh.q_hi[g + 8][k0 + 2 * c]),
                load_half2(&sh.q_hi[g][k0 + 2 * c + 8]), load_half2(&sh.q_hi[g + 8][k0 + 2 * c + 8]), b0, b1);
        mma_f16(s_acc, load_half2(&sh.q_lo[g][k0 + 2 * c]), load_half2(&sh.q_lo[g + 8][k0 + 2 * c]),
                load_half2(&sh.q_lo[g][k0 + 2 * c + 8]), load_half2(&sh.q_lo[g + 8][k0 + 2 * c + 8]), b0, b1);
      }
      sh.s[g][8 * warp + 2 * c] = s_acc[0] * scale;
      sh.s[g][8 * warp + 2 * c + 1] = s_acc[1] * scale;
      sh.s[g + 8][8 * warp + 2 * c] = s_acc[2] * scale;
      sh.s[g + 8][8 * warp + 2 * c + 1] = s_acc[3] * scale;
    }
    __syncthreads();
    // Online softmax: warp w, heads 4w .. 4w+3, lane = row.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = 4 * warp + i;
      const float s = lane < nr ? sh.s[h][lane] : -INFINITY;
      const float m_new = fmaxf(m_run[i], warp_max(s));
      const float corr = expf(m_run[i] - m_new);  // 0 on the first tile
      const float e = lane < nr ? expf(s - m_new) : 0.0f;
      l_run[i] = l_run[i] * corr + warp_sum(e);
      m_run[i] = m_new;
      const __half hi = __float2half_rn(e);
      sh.p_hi[h][lane] = hi;
      sh.p_lo[h][lane] = __float2half_rn(e - __half2float(hi));
      if (lane == 0) sh.corr[h] = corr;
    }
    __syncthreads();
    // O = O * corr + P . V over this warp's 128 dims.
    const float corr_g = sh.corr[g], corr_g8 = sh.corr[g + 8];
#pragma unroll
    for (int nt = 0; nt < 16; ++nt) {
      acc[nt][0] *= corr_g;
      acc[nt][1] *= corr_g;
      acc[nt][2] *= corr_g8;
      acc[nt][3] *= corr_g8;
    }
#pragma unroll
    for (int ks = 0; ks < kTileRows; ks += 16) {
      const uint32_t ah0 = load_half2(&sh.p_hi[g][ks + 2 * c]), ah1 = load_half2(&sh.p_hi[g + 8][ks + 2 * c]);
      const uint32_t ah2 = load_half2(&sh.p_hi[g][ks + 2 * c + 8]), ah3 = load_half2(&sh.p_hi[g + 8][ks + 2 * c + 8]);
      const uint32_t al0 = load_half2(&sh.p_lo[g][ks + 2 * c]), al1 = load_half2(&sh.p_lo[g + 8][ks + 2 * c]);
      const uint32_t al2 = load_half2(&sh.p_lo[g][ks + 2 * c + 8]), al3 = load_half2(&sh.p_lo[g + 8][ks + 2 * c + 8]);
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        const int d = warp * 128 + nt * 8 + g;
        const uint32_t b0 = pack_halves(sh.rows[ks + 2 * c][d], sh.rows[ks + 2 * c + 1][d]);
        const uint32_t b1 = pack_halves(sh.rows[ks + 2 * c + 8][d], sh.rows[ks + 2 * c + 9][d]);
        mma_f16(acc[nt], ah0, ah1, ah2, ah3, b0, b1);
        mma_f16(acc[nt], al0, al1, al2, al3, b0, b1);
      }
    }
  }

  // Sink and normalisation, then the inverse RoPE of each head's tail.
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sh.m[4 * warp + i] = m_run[i];
      sh.l[4 * warp + i] = l_run[i];
    }
  }
  __syncthreads();  // m and l are visible; the rows tile is free
  float* o = reinterpret_cast<float*>(&sh.rows[0][0]);  // [16][512]
  float f[2], inv_z[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int h = g + 8 * half;
    const float sink = p.sinks[h0 + h];
    const float mf = fmaxf(sh.m[h], sink);
    f[half] = expf(sh.m[h] - mf);
    inv_z[half] = 1.0f / (sh.l[h] * f[half] + expf(sink - mf));
  }
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) {
    const int d = warp * 128 + nt * 8 + 2 * c;
    o[g * kMmaDim + d] = acc[nt][0] * f[0] * inv_z[0];
    o[g * kMmaDim + d + 1] = acc[nt][1] * f[0] * inv_z[0];
    o[(g + 8) * kMmaDim + d] = acc[nt][2] * f[1] * inv_z[1];
    o[(g + 8) * kMmaDim + d + 1] = acc[nt][3] * f[1] * inv_z[1];
  }
  __syncthreads();
  const int pairs = p.rope_dim / 2;
  for (int i = threadIdx.x; i < kMmaHeads * pairs; i += kMmaThreads) {
    float* tail = o + (i / pairs) * kMmaDim + kMmaDim - p.rope_dim;
    const int j = i % pairs;
    rope_pair(&tail[2 * j], &tail[2 * j + 1], static_cast<float>(vis.pos), p.rope_freqs[j], true);
  }
  __syncthreads();
  float* out = p.out + (static_cast<int64_t>(t) * p.heads + h0) * kMmaDim;
  for (int i = threadIdx.x; i < kMmaHeads * kMmaDim; i += kMmaThreads) out[i] = o[i];
}

// Tensor-core variant for head_dim 512 and groups of 64 heads: block (token t, 64 heads),
// 8 warps, so each staged row serves 64 heads (four times the reuse of the 16-head
// kernel). Same arithmetic per head as attention_chunk_mma_kernel: f16 rows, Q and P
// split into f16 high and low parts, f32 accumulation, online softmax in f32.
//   scores: warp w computes heads 16*(w/2) .. +15 against rows 16*(w%2) .. +15;
//   softmax: warp w owns heads 8w .. 8w+7, lane = row;
//   P . V: warp w owns dims 64w .. 64w+63 of all 64 heads (4 x 8 tiles of 16 x 8).
constexpr int kWideHeads = 64;
constexpr int kWideThreads = 256;

struct WideShared {
  const float* row_ptr[2][kTileRows];  // rows of the current and the next tile
  __half q_hi[kWideHeads][kMmaLd];  // q_hi and q_lo are reused as float o[64][512] at the end
  __half q_lo[kWideHeads][kMmaLd];
  __half rows[kTileRows][kMmaLd];
  float s[kWideHeads][kTileRows + 1];
  __half p_hi[kWideHeads][kMmaPld];
  __half p_lo[kWideHeads][kMmaPld];
  float corr[kWideHeads];
  float m[kWideHeads];
  float l[kWideHeads];
};
static_assert(sizeof(__half) * 2 * kWideHeads * kMmaLd >= sizeof(float) * kWideHeads * kMmaDim,
              "the query tiles hold the output");

// ldmatrix: lanes 8i .. 8i+7 give the row addresses of 8x8 f16 matrix i; register i
// receives matrix i (transposed with .trans), as the mma fragments expect.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half* row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

__global__ void __launch_bounds__(kWideThreads, 1) attention_chunk_mma64_kernel(AttentionChunkLaunch p) {
  extern __shared__ __align__(16) unsigned char raw_shared[];
  WideShared& sh = *reinterpret_cast<WideShared*>(raw_shared);
  const int t = blockIdx.x;
  const int h0 = blockIdx.y * kWideHeads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const ChunkVisible vis = chunk_visible(p, t);
  const int total = vis.nraw + vis.ncomp;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(kMmaDim)));

  const float* qt = p.q + (static_cast<int64_t>(t) * p.heads + h0) * kMmaDim;
  for (int i = threadIdx.x; i < kWideHeads * kMmaDim / 4; i += kWideThreads) {
    const float4 x = __ldg(reinterpret_cast<const float4*>(qt) + i);
    const int h = (4 * i) / kMmaDim, d = (4 * i) % kMmaDim;
    const float xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const __half hi = __float2half_rn(xs[u]);
      sh.q_hi[h][d + u] = hi;
      sh.q_lo[h][d + u] = __float2half_rn(xs[u] - __half2float(hi));
    }
  }
  float m_run[8], l_run[8];  // softmax heads 8*warp .. 8*warp+7
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    m_run[i] = -INFINITY;
    l_run[i] = 0.0f;
  }
  float acc[4][8][4];  // [head tile][dim tile][fragment]
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    }
  }

  const int col = threadIdx.x & (kMmaDim / 4 - 1);  // float4 column this thread stages
  const int row_parity = threadIdx.x / (kMmaDim / 4);
  static_assert(kWideThreads == 2 * (kMmaDim / 4), "two threads per float4 column");
  // Row addresses are found one tile ahead (a selected row's index is a load of its own).
  if (threadIdx.x < kTileRows && static_cast<int>(threadIdx.x) < total) {
    sh.row_ptr[0][threadIdx.x] = chunk_row(p, vis, threadIdx.x);
  }
  for (int r0 = 0; r0 < total; r0 += kTileRows) {
    const int nr = min(kTileRows, total - r0);
    const int cur = (r0 / kTileRows) & 1;
    __syncthreads();  // the previous tile, P and corr are no longer read; row_ptr[cur] is written
    if (threadIdx.x < kTileRows && r0 + kTileRows + static_cast<int>(threadIdx.x) < total) {
      sh.row_ptr[cur ^ 1][threadIdx.x] = chunk_row(p, vis, r0 + kTileRows + threadIdx.x);
    }
    {
      constexpr int kPerThread = kTileRows / 2;
      float4 v[kPerThread];
#pragma unroll
      for (int u = 0; u < kPerThread; ++u) {
        const int j = 2 * u + row_parity;
        v[u] = j < nr ? __ldg(reinterpret_cast<const float4*>(sh.row_ptr[cur][j]) + col)
                      : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kPerThread; ++u) {
        __half2* dst = reinterpret_cast<__half2*>(&sh.rows[2 * u + row_parity][4 * col]);
        dst[0] = __floats2half2_rn(v[u].x, v[u].y);
        dst[1] = __floats2half2_rn(v[u].z, v[u].w);
      }
    }
    __syncthreads();
    {
      const int hm = 16 * (warp >> 1);   // first head of this warp's tile
      const int rn = 16 * (warp & 1);    // first row of its two 8-row tiles
      float s0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const __half* brow0 = sh.rows[rn + g];
      const __half* brow1 = sh.rows[rn + 8 + g];
      // ldmatrix addresses of the 16 x 16 query block: matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15).
      const int a_row = hm + (lane & 7) + 8 * ((lane >> 3) & 1);
      const int a_col = 8 * (lane >> 4);
#pragma unroll 4
      for (int k0 = 0; k0 < kMmaDim; k0 += 16) {
        const uint32_t b00 = load_half2(brow0 + k0 + 2 * c), b01 = load_half2(brow0 + k0 + 2 * c + 8);
        const uint32_t b10 = load_half2(brow1 + k0 + 2 * c), b11 = load_half2(brow1 + k0 + 2 * c + 8);
        uint32_t ha[4], la[4];
        ldmatrix_x4(ha, &sh.q_hi[a_row][k0 + a_col]);
        ldmatrix_x4(la, &sh.q_lo[a_row][k0 + a_col]);
        mma_f16(s0, ha[0], ha[1], ha[2], ha[3], b00, b01);
        mma_f16(s0, la[0], la[1], la[2], la[3], b00, b01);
        mma_f16(s1, ha[0], ha[1], ha[2], ha[3], b10, b11);
        mma_f16(s1, la[0], la[1], la[2], la[3], b10, b11);
      }
      sh.s[hm + g][rn + 2 * c] = s0[0] * scale;
      sh.s[hm + g][rn + 2 * c + 1] = s0[1] * scale;
      sh.s[hm + g + 8][rn + 2 * c] = s0[2] * scale;
      sh.s[hm + g + 8][rn + 2 * c + 1] = s0[3] * scale;
      sh.s[hm + g][rn + 8 + 2 * c] = s1[0] * scale;
      sh.s[hm + g][rn + 8 + 2 * c + 1] = s1[1] * scale;
      sh.s[hm + g + 8][rn + 8 + 2 * c] = s1[2] * scale;
      sh.s[hm + g + 8][rn + 8 + 2 * c + 1] = s1[3] * scale;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int h = 8 * warp + i;
      const float s = lane < nr ? sh.s[h][lane] : -INFINITY;
      const float m_new = fmaxf(m_run[i], warp_max(s));
      const float corr = expf(m_run[i] - m_new);  // 0 on the first tile
      const float e = lane < nr ? expf(s - m_new) : 0.0f;
      l_run[i] = l_run[i] * corr + warp_sum(e);
      m_run[i] = m_new;
      const __half hi = __float2half_rn(e);
      sh.p_hi[h][lane] = hi;
      sh.p_lo[h][lane] = __float2half_rn(e - __half2float(hi));
      if (lane == 0) sh.corr[h] = corr;
    }
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
      const float cg = sh.corr[16 * mt + g], cg8 = sh.corr[16 * mt + g + 8];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        acc[mt][nt][0] *= cg;
        acc[mt][nt][1] *= cg;
        acc[mt][nt][2] *= cg8;
        acc[mt][nt][3] *= cg8;
      }
    }
#pragma unroll
    for (int ks = 0; ks < kTileRows; ks += 16) {
      uint32_t ah[4][4], al[4][4];
      const int p_row = (lane & 7) + 8 * ((lane >> 3) & 1), p_col = ks + 8 * (lane >> 4);
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        ldmatrix_x4(ah[mt], &sh.p_hi[16 * mt + p_row][p_col]);
        ldmatrix_x4(al[mt], &sh.p_lo[16 * mt + p_row][p_col]);
      }
      // V fragments of two dim tiles at once: matrices (rows ks..+7 | ks+8..+15) x
      // (dims d0..+7 | d0+8..+15), transposed: b[0], b[1] for tile nt, b[2], b[3] for nt+1.
      const int v_row = ks + (lane & 7) + 8 * ((lane >> 3) & 1), v_col = warp * 64 + 8 * (lane >> 4);
#pragma unroll
      for (int nt = 0; nt < 8; nt += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, &sh.rows[v_row][v_col + nt * 8]);
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          mma_f16(acc[mt][nt], ah[mt][0], ah[mt][1], ah[mt][2], ah[mt][3], b[0], b[1]);
          mma_f16(acc[mt][nt], al[mt][0], al[mt][1], al[mt][2], al[mt][3], b[0], b[1]);
          mma_f16(acc[mt][nt + 1], ah[mt][0], ah[mt][1], ah[mt][2], ah[mt][3], b[2], b[3]);
          mma_f16(acc[mt][nt + 1], al[mt][0], al[mt][1], al[mt][2], al[mt][3], b[2], b[3]);
        }
      }
    }
  }

  // Sink and normalisation, then the inverse RoPE of each head's tail.
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      sh.m[8 * warp + i] = m_run[i];
      sh.l[8 * warp + i] = l_run[i];
    }
  }
  __syncthreads();  // m and l are visible; the query tiles are free
  float* o = reinterpret_cast<float*>(&sh.q_hi[0][0]);  // [64][512]
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
    float f[2], inv_z[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int h = 16 * mt + g + 8 * half;
      const float sink = p.sinks[h0 + h];
      const float mf = fmaxf(sh.m[h], sink);
      f[half] = expf(sh.m[h] - mf);
      inv_z[half] = 1.0f / (sh.l[h] * f[half] + expf(sink - mf));
    }
    const int h = 16 * mt + g;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int d = warp * 64 + nt * 8 + 2 * c;
      o[h * kMmaDim + d] = acc[mt][nt][0] * f[0] * inv_z[0];
      o[h * kMmaDim + d + 1] = acc[mt][nt][1] * f[0] * inv_z[0];
      o[(h + 8) * kMmaDim + d] = acc[mt][nt][2] * f[1] * inv_z[1];
      o[(h + 8) * kMmaDim + d + 1] = acc[mt][nt][3] * f[1] * inv_z[1];
    }
  }
  __syncthreads();
  const int pairs = p.rope_dim / 2;
  for (int i = threadIdx.x; i < kWideHeads * pairs; i += kWideThreads) {
    float* tail = o + (i / pairs) * kMmaDim + kMmaDim - p.rope_dim;
    const int j = i % pairs;
    rope_pair(&tail[2 * j], &tail[2 * j + 1], static_cast<float>(vis.pos), p.rope_freqs[j], true);
  }
  __syncthreads();
  float4* out = reinterpret_cast<float4*>(p.out + (static_cast<int64_t>(t) * p.heads + h0) * kMmaDim);
  const float4* o4 = reinterpret_cast<const float4*>(o);
  for (int i = threadIdx.x; i < kWideHeads * kMmaDim / 4; i += kWideThreads) out[i] = o4[i];
}

// The 64-head kernel stages 64 queries (about 186 KiB of shared memory): Hopper-class
// GPUs only. Smaller ones (the GB10: ~99 KiB per block) run the 16-head kernel.
bool wide_kernel_fits() { return static_cast<int>(sizeof(WideShared)) <= max_shared_per_block(); }

Status attention_chunk_init() {
  static const Status status = [] {
    Status s = cuda_status(cudaFuncSetAttribute(attention_chunk_kernel<1>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024),
                           "raising the chunk attention kernel's shared memory limit");
    if (!s.ok()) return s;
    s = cuda_status(cudaFuncSetAttribute(attention_chunk_kernel<2>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024),
                    "raising the chunk attention kernel's shared memory limit");
    if (!s.ok()) return s;
    s = cuda_status(cudaFuncSetAttribute(attention_chunk_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(sizeof(MmaShared))),
                    "raising the tensor-core chunk attention kernel's shared memory limit");
    if (!s.ok()) return s;
    if (wide_kernel_fits()) {
      s = cuda_status(cudaFuncSetAttribute(attention_chunk_mma64_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(sizeof(WideShared))),
                      "raising the 64-head tensor-core chunk attention kernel's shared memory limit");
      if (!s.ok()) return s;
    }
    return cuda_status(cudaFuncSetAttribute(indexer_chunk_score_kernel,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024),
                       "raising the chunk indexer kernel's shared memory limit");
  }();
  return status;
}

}  // namespace

Status launch_compressor_chunk(const CompressorChunkLaunch& p, cudaStream_t stream) {
  if (p.ratio <= 0 || p.d <= 0 || p.state_slots < (p.ratio == 4 ? 8 : p.ratio)) {
    return Status::Error("compressor chunk: invalid ratio, row length or state size");
  }
  if (p.n < 0 || p.pos0 < 0) return Status::Error("compressor chunk: negative chunk start or length");
  if (p.n == 0) return Status::Ok();
  const int coff = p.ratio == 4 ? 2 : 1;
  const int w = coff * p.d;
  if (p.kz_stride < w) return Status::Error("compressor chunk: k/z row stride shorter than the projection width");
  if (!p.k || !p.z || !p.ape || !p.state_k || !p.state_z || !p.rows) {
    return Status::Error("compressor chunk: missing input, state or row buffer");
  }
  const int threads = pow2_threads(w);
  const int c_begin = p.pos0 / p.ratio;
  const int c_end = static_cast<int>(std::min<int64_t>((static_cast<int64_t>(p.pos0) + p.n) / p.ratio, p.max_rows));
  if (c_end > c_begin) {
    // Pooling: one thread per channel, 64 channels per block, so that every row's
    // channels spread over many multiprocessors.
    constexpr int kPoolThreads = 64;
    const dim3 pool_grid(c_end - c_begin, (p.d + kPoolThreads - 1) / kPoolThreads);
    compressor_chunk_pool_kernel<<<pool_grid, kPoolThreads, 0, stream>>>(p, c_begin);
    DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "compressor chunk pooling launch"));
    const size_t shared = sizeof(float) * (p.d + 32 + p.d / 32 + 1);
    compressor_chunk_post_kernel<<<c_end - c_begin, threads, shared, stream>>>(p, c_begin);
    DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "compressor chunk post-processing launch"));
  }
  const int first = std::max(p.pos0, p.pos0 + p.n - p.state_slots);
  compressor_chunk_state_kernel<<<p.pos0 + p.n - first, threads, 0, stream>>>(p, first);
  return cuda_status(cudaGetLastError(), "compressor chunk state launch");
}

int64_t indexer_chunk_workspace_floats(int n, int64_t max_rows) {
  return static_cast<int64_t>(std::max(n, 0)) * std::max<int64_t>(max_rows, 1);
}

Status launch_indexer_chunk(const IndexerChunkLaunch& p, cudaStream_t stream) {
  if (p.ratio <= 0 || p.heads <= 0 || p.head_dim <= 0 || p.topk <= 0) {
    return Status::Error("indexer chunk: invalid ratio, heads, head size or top-k");
  }
  if (p.n < 0 || p.pos0 < 0) return Status::Error("indexer chunk: negative chunk start or length");
  if (p.n == 0) return Status::Ok();
  if (!p.q || !p.weights || !p.rows || !p.scores || !p.selected || !p.active) {
    return Status::Error("indexer chunk: missing query, weights, rows, score workspace or output buffer");
  }
  const int64_t stride = p.scores_stride > 0 ? p.scores_stride : std::max<int64_t>(p.max_rows, 1);
  if (stride < p.max_rows) return Status::Error("indexer chunk: score stride shorter than max_rows");
  if (p.head_dim % 32 != 0 || p.head_dim / 32 > kIndexMaxPerLane) {
    return Status::Error("indexer chunk: head size must be a multiple of 32 and at most 128");
  }
  if ((reinterpret_cast<uintptr_t>(p.q) & 15) != 0) {
    return Status::Error("indexer chunk: queries are not 16-byte aligned");
  }
  DS4_RETURN_IF_ERROR(attention_chunk_init());
  const int64_t nc_max = std::min<int64_t>((static_cast<int64_t>(p.pos0) + p.n) / p.ratio, p.max_rows);
  if (nc_max > p.topk) {
    const size_t shared = sizeof(float) * ((kIndexRows + kIndexTokens) * kIndexLd + 16 * kIndexThreads);
    const int64_t row_groups = (nc_max + kIndexRows - 1) / kIndexRows;
    const int token_groups = (p.n + kIndexTokens - 1) / kIndexTokens;
    indexer_chunk_score_kernel<<<dim3(static_cast<unsigned>(row_groups), token_groups), kIndexThreads, shared,
                                 stream>>>(p, stride);
    DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "indexer chunk score launch"));
  }
  indexer_chunk_topk_kernel<<<p.n, kSelectThreads, 0, stream>>>(p, stride);
  return cuda_status(cudaGetLastError(), "indexer chunk top-k launch");
}

int64_t attention_chunk_workspace_floats(int, int, int) { return 0; }

Status launch_attention_chunk(const AttentionChunkLaunch& p, cudaStream_t stream) {
  if (p.heads <= 0 || p.head_dim <= 0 || p.head_dim % 32 != 0 || p.head_dim / 32 > kMaxPerLane) {
    return Status::Error("attention chunk: head size must be a multiple of 32 and at most 512");
  }
  if (p.rope_dim < 0 || p.rope_dim > p.head_dim || p.rope_dim % 2 != 0) {
    return Status::Error("attention chunk: invalid rope size");
  }
  if (p.window <= 0 || p.ring_slots < p.window) {
    return Status::Error("attention chunk: the raw ring is smaller than the window");
  }
  if (p.n < 0 || p.pos0 < 0) return Status::Error("attention chunk: negative chunk start or length");
  if (p.n == 0) return Status::Ok();
  if (!p.q || !p.out || !p.chunk_kv || !p.sinks || (p.pos0 > 0 && !p.ring)) {
    return Status::Error("attention chunk: missing query, output, raw rows or sinks");
  }
  if (p.ratio != 0 && !p.comp) return Status::Error("attention chunk: compressed layer without compressed rows");
  auto misaligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) != 0; };
  if (misaligned(p.chunk_kv) || misaligned(p.ring) || misaligned(p.comp)) {
    return Status::Error("attention chunk: raw or compressed rows are not 16-byte aligned");
  }
  if (p.ratio == 4 && (!p.active || !p.selected) &&
      (static_cast<int64_t>(p.pos0) + p.n) / 4 > p.topk) {
    return Status::Error("attention chunk: ratio-4 layer past the indexer gate without a selection");
  }
  DS4_RETURN_IF_ERROR(attention_chunk_init());
  if (p.heads_per_block != 0 && p.heads_per_block != kMmaHeads && p.heads_per_block != kWideHeads) {
    return Status::Error("attention chunk: heads_per_block must be 0, 16 or 64");
  }
  if (p.heads_per_block == kWideHeads && !wide_kernel_fits()) {
    return Status::Error("attention chunk: the 64-head kernel needs " + std::to_string(sizeof(WideShared)) +
                         " bytes of shared memory per block; this GPU allows " +
                         std::to_string(max_shared_per_block()));
  }
  const bool wide = (p.heads_per_block == 0 && wide_kernel_fits()) || p.heads_per_block == kWideHeads;
  if (p.head_dim == kMmaDim && p.heads % kWideHeads == 0 && wide) {
    if ((reinterpret_cast<uintptr_t>(p.q) & 15) != 0 || (reinterpret_cast<uintptr_t>(p.out) & 15) != 0) {
      return Status::Error("attention chunk: queries or outputs are not 16-byte aligned");
    }
    attention_chunk_mma64_kernel<<<dim3(p.n, p.heads / kWideHeads), kWideThreads, sizeof(WideShared), stream>>>(p);
    return cuda_status(cudaGetLastError(), "64-head tensor-core attention chunk launch");
  }
  if (p.heads_per_block == kWideHeads) {
    return Status::Error("attention chunk: 64-head blocks need head_dim 512 and heads a multiple of 64");
  }
  if (p.head_dim == kMmaDim && p.heads % kMmaHeads == 0) {
    attention_chunk_mma_kernel<<<dim3(p.n, p.heads / kMmaHeads), kMmaThreads, sizeof(MmaShared), stream>>>(p);
    return cuda_status(cudaGetLastError(), "tensor-core attention chunk launch");
  }
  const size_t shared = sizeof(float) * kTileRows * p.head_dim;
  if (p.heads % kMaxHeadsPerBlock == 0) {
    // 8 warps of 2 heads: each staged row serves 16 heads.
    attention_chunk_kernel<2><<<dim3(p.n, p.heads / kMaxHeadsPerBlock), 256, shared, stream>>>(p, kMaxHeadsPerBlock);
  } else {
    int g = std::min(p.heads, kMaxHeadsPerBlock);
    while (p.heads % g != 0) --g;
    attention_chunk_kernel<1><<<dim3(p.n, p.heads / g), 32 * g, shared, stream>>>(p, g);
  }
  return cuda_status(cudaGetLastError(), "attention chunk launch");
}

}  // namespace ds4
