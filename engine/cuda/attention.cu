#include "cuda/attention.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/device_limits.h"
#include "cuda/launch.h"
#include "cuda/device_math.cuh"

namespace ds4 {
namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

// The split partials follow the completion counters at the workspace's start
// (attention_counter_floats in attention.h).
__host__ __device__ __forceinline__ float* split_partials(const AttentionLaunch& p) {
  return p.workspace + (static_cast<int64_t>(p.heads) + 3) / 4 * 4;
}

__device__ __forceinline__ const float* visible_row(const AttentionLaunch& p, int pos, int nraw,
                                                    bool use_selection, int r) {
  if (r < nraw) return p.raw + static_cast<int64_t>((pos - nraw + 1 + r) % p.ring) * p.head_dim;
  const int c = use_selection ? p.selected[r - nraw] : r - nraw;
  return p.comp + static_cast<int64_t>(c) * p.head_dim;
}

// True when raw row r of the window is absent (tagged ring only).
__device__ __forceinline__ bool raw_row_absent(const AttentionLaunch& p, int pos, int nraw, int r) {
  if (!p.raw_tags || r >= nraw) return false;
  const int t = pos - nraw + 1 + r;
  return p.raw_tags[t % p.ring] != t;
}

struct Visible {
  int nraw, n;
  bool use_selection;
};

// `active`: the indexer's gate flag (read only in ratio-4 layers).
__device__ __forceinline__ Visible visible_rows(const AttentionLaunch& p, int pos, int active) {
  Visible v;
  v.nraw = min(pos + 1, p.window);
  int ncomp = 0;
  v.use_selection = false;
  if (p.ratio == 4) {
    const int nc = (pos + 1) / 4;
    v.use_selection = active != 0;
    ncomp = v.use_selection ? p.topk : nc;
  } else if (p.ratio > 0) {
    ncomp = (pos + 1) / p.ratio;
  }
  if (ncomp > p.max_comp_rows) ncomp = static_cast<int>(p.max_comp_rows);
  v.n = min(v.nraw + ncomp, p.max_visible);
  return v;
}

__device__ __forceinline__ Visible visible_rows(const AttentionLaunch& p, int pos) {
  return visible_rows(p, pos, p.ratio == 4 ? *p.active : 0);
}

// Block (head h, split j): scores of rows [j*chunk, (j+1)*chunk), their local max m,
// sum l of exp(s - m) and the unnormalised output sum; written to the workspace.
__global__ void __launch_bounds__(kThreads) attention_partial_kernel(AttentionLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  extern __shared__ float shared[];
  float* q = shared;
  float* probs = shared + p.head_dim;
  __shared__ float scratch[32];
  const int h = blockIdx.x, j = blockIdx.y;
  const int pos = *p.pos;
  const Visible vis = visible_rows(p, pos);
  const int chunk = (vis.n + p.splits - 1) / p.splits;
  const int r0 = j * chunk;
  const int r1 = min(vis.n, r0 + chunk);
  const int nr = max(0, r1 - r0);
  float* ws = split_partials(p) + (static_cast<int64_t>(h) * p.splits + j) * (p.head_dim + 2);

  for (int i = threadIdx.x; i < p.head_dim; i += kThreads) q[i] = p.q[h * p.head_dim + i];
  __syncthreads();
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(p.head_dim)));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = warp; r < nr; r += kThreads / 32) {
    const float* row = visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r);
    float d = 0.0f;
    for (int i = lane; i < p.head_dim; i += 32) d += q[i] * row[i];
    d = warp_sum(d);
    if (lane == 0) probs[r] = raw_row_absent(p, pos, vis.nraw, r0 + r) ? -INFINITY : d * scale;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int r = threadIdx.x; r < nr; r += kThreads) mx = fmaxf(mx, probs[r]);
  mx = block_max(mx, scratch);
  __syncthreads();
  float sum = 0.0f;
  for (int r = threadIdx.x; r < nr; r += kThreads) {
    const float e = probs[r] == -INFINITY ? 0.0f : expf(probs[r] - mx);
    probs[r] = e;
    sum += e;
  }
  sum = block_sum(sum, scratch);
  __syncthreads();
  for (int i = threadIdx.x; i < p.head_dim; i += kThreads) {
    float acc = 0.0f;
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
      const float a0 = visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r)[i];
      const float a1 = visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r + 1)[i];
      const float a2 = visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r + 2)[i];
      const float a3 = visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r + 3)[i];
      acc += probs[r] * a0;
      acc += probs[r + 1] * a1;
      acc += probs[r + 2] * a2;
      acc += probs[r + 3] * a3;
    }
    for (; r < nr; ++r) acc += probs[r] * visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r)[i];
    ws[i] = acc;
  }
  if (threadIdx.x == 0) {
    ws[p.head_dim] = mx;
    ws[p.head_dim + 1] = sum;
  }
}

static_assert(kThreads / 32 >= kAttentionGroupHeads, "one warp per head of the group in the softmax step");

// Heads per block of the head-group kernel for this launch: the caller's choice, or the
// most (fewest row reads) that still gives 64 blocks.
int group_heads(const AttentionLaunch& p) {
  if (p.head_group == 2 || p.head_group == 4 || p.head_group == 8) return p.head_group;
  for (int g : {8, 4}) {
    if (static_cast<int64_t>(p.splits) * ((p.heads + g - 1) / g) >= 64) return g;
  }
  return 2;
}

// Rows per split in the worst case (the stride of the head-group kernel's score rows).
__host__ __device__ __forceinline__ int split_capacity(const AttentionLaunch& p) {
  return (p.max_visible + p.splits - 1) / p.splits;
}

// Bytes of the row-pointer table, rounded up so the query after it is 16-byte aligned.
__host__ __device__ __forceinline__ size_t row_table_bytes(int cap) {
  return (sizeof(const float*) * static_cast<size_t>(cap) + 15) / 16 * 16;
}

size_t head_group_shared_bytes(const AttentionLaunch& p, int group) {
  const int cap = split_capacity(p);
  return row_table_bytes(cap) + sizeof(float) * group * (p.head_dim + static_cast<size_t>(cap));
}

// The fused kernel's: the head-group kernel's, plus the group's combine factors.
size_t fused_shared_bytes(const AttentionLaunch& p, int group) {
  return head_group_shared_bytes(p, group) + sizeof(float) * group * static_cast<size_t>(p.splits);
}

// Dot products of one row (four float4 per lane at most: head_dim <= 512, a multiple of
// 128) with every head of the group, summed over the warp.
template <int kGroupHeads>
__device__ __forceinline__ void group_dots_vec4(const float4 (&v)[4], const float* q, int D, int lane,
                                                float (&d)[kGroupHeads]) {
#pragma unroll
  for (int g = 0; g < kGroupHeads; ++g) {
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k * 128 < D) {
        const float4 qv = *reinterpret_cast<const float4*>(q + g * D + k * 128 + 4 * lane);
        s += qv.x * v[k].x;
        s += qv.y * v[k].y;
        s += qv.z * v[k].z;
        s += qv.w * v[k].w;
      }
    }
    d[g] = warp_sum(s);
  }
}

// Scores of the split's nr rows for every head of the group into probs[g * cap + r]
// (scale applied; absent tagged rows -INFINITY): a warp per row, every head of the group
// from one read of the row.
template <int kGroupHeads>
__device__ __forceinline__ void group_scores(const AttentionLaunch& p, const float* const* rows, const float* q,
                                             float* probs, int cap, int nr, int r0, int pos, const Visible& vis,
                                             int lane, int warp) {
  const int D = p.head_dim;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
  const bool vec4 = D % 128 == 0 && D <= 512 && reinterpret_cast<uintptr_t>(p.raw) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.comp) % 16 == 0;
  if (vec4) {
    // Two rows per warp at a time, every load of both issued before any product.
    for (int r = 2 * warp; r < nr; r += 2 * (kThreads / 32)) {
      const bool second = r + 1 < nr;
      float4 v0[4], v1[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        v0[k] = k * 128 < D ? *reinterpret_cast<const float4*>(rows[r] + k * 128 + 4 * lane) : zero;
        v1[k] = second && k * 128 < D ? *reinterpret_cast<const float4*>(rows[r + 1] + k * 128 + 4 * lane)
                                       : zero;
      }
      float d0[kGroupHeads], d1[kGroupHeads];
      group_dots_vec4<kGroupHeads>(v0, q, D, lane, d0);
      group_dots_vec4<kGroupHeads>(v1, q, D, lane, d1);
      const bool absent0 = raw_row_absent(p, pos, vis.nraw, r0 + r);
      const bool absent1 = second && raw_row_absent(p, pos, vis.nraw, r0 + r + 1);
      if (lane == 0) {
#pragma unroll
        for (int g = 0; g < kGroupHeads; ++g) {
          probs[g * cap + r] = absent0 ? -INFINITY : d0[g] * scale;
          if (second) probs[g * cap + r + 1] = absent1 ? -INFINITY : d1[g] * scale;
        }
      }
    }
  } else {
    for (int r = warp; r < nr; r += kThreads / 32) {
      const float* row = rows[r];
      float d[kGroupHeads];
#pragma unroll
      for (int g = 0; g < kGroupHeads; ++g) d[g] = 0.0f;
      for (int i = lane; i < D; i += 32) {
        const float v = row[i];
#pragma unroll
        for (int g = 0; g < kGroupHeads; ++g) d[g] += q[g * D + i] * v;
      }
      const bool absent = raw_row_absent(p, pos, vis.nraw, r0 + r);
#pragma unroll
      for (int g = 0; g < kGroupHeads; ++g) {
        const float s = warp_sum(d[g]);
        if (lane == 0) probs[g * cap + r] = absent ? -INFINITY : s * scale;
      }
    }
  }
}

// Softmax pieces: warp g owns head g of the group; probs become exp(s - max), and
// s_max / s_sum receive the split's max and sum.
template <int kGroupHeads>
__device__ __forceinline__ void group_softmax(float* probs, int cap, int nr, float* s_max, float* s_sum, int lane,
                                              int warp) {
  if (warp < kGroupHeads) {
    float* pr = probs + warp * cap;
    float mx = -INFINITY;
    for (int r = lane; r < nr; r += 32) mx = fmaxf(mx, pr[r]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int r = lane; r < nr; r += 32) {
      const float e = pr[r] == -INFINITY ? 0.0f : expf(pr[r] - mx);
      pr[r] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      s_max[warp] = mx;
      s_sum[warp] = sum;
    }
  }
}

// Output sums of dimensions (i, i + 1) for every head of the group over the split's
// rows, in row order; each row pair is loaded once for all heads of the group.
template <int kGroupHeads>
__device__ __forceinline__ void group_accumulate(const float* const* rows, const float* probs, int cap, int nr,
                                                 int i, float2 (&acc)[kGroupHeads]) {
#pragma unroll
  for (int g = 0; g < kGroupHeads; ++g) acc[g] = make_float2(0.0f, 0.0f);
  int r = 0;
  for (; r + 8 <= nr; r += 8) {
    float2 a[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] = *reinterpret_cast<const float2*>(rows[r + k] + i);
#pragma unroll
    for (int g = 0; g < kGroupHeads; ++g) {
      const float* pr = probs + g * cap + r;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        acc[g].x += pr[k] * a[k].x;
        acc[g].y += pr[k] * a[k].y;
      }
    }
  }
  for (; r < nr; ++r) {
    const float2 a = *reinterpret_cast<const float2*>(rows[r] + i);
#pragma unroll
    for (int g = 0; g < kGroupHeads; ++g) {
      acc[g].x += probs[g * cap + r] * a.x;
      acc[g].y += probs[g * cap + r] * a.y;
    }
  }
}

// Block (split j, head group g): the rows of split j, read once for the group's heads.
// Per head: dot products reduced over the warp (each lane's share in float4 pieces for
// 128-multiple head dims up to 512, lane-strided otherwise), the split's max and sum of
// exp(s - max), and the output sum over rows in row order. f32 throughout, no atomics.
// Results go to the per-head kernel's workspace slots (head, split).
template <int kGroupHeads>
__global__ void __launch_bounds__(kThreads) attention_group_partial_kernel(AttentionLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  extern __shared__ __align__(16) unsigned char group_shared[];
  const int cap = split_capacity(p);
  const int D = p.head_dim;
  const float** rows = reinterpret_cast<const float**>(group_shared);
  float* q = reinterpret_cast<float*>(group_shared + row_table_bytes(cap));  // [G][D]
  float* probs = q + kGroupHeads * D;                                               // [G][cap]
  __shared__ float s_max[kGroupHeads], s_sum[kGroupHeads];
  const int j = blockIdx.x, h0 = blockIdx.y * kGroupHeads;
  const int nh = min(kGroupHeads, p.heads - h0);
  const int pos = *p.pos;
  const Visible vis = visible_rows(p, pos);
  const int chunk = (vis.n + p.splits - 1) / p.splits;
  const int r0 = j * chunk;
  const int nr = max(0, min(vis.n, r0 + chunk) - r0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  for (int i = threadIdx.x; i < kGroupHeads * D; i += kThreads) {
    q[i] = i < nh * D ? p.q[static_cast<int64_t>(h0) * D + i] : 0.0f;
  }
  for (int r = threadIdx.x; r < nr; r += kThreads) {
    rows[r] = visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r);
  }
  __syncthreads();
  group_scores<kGroupHeads>(p, rows, q, probs, cap, nr, r0, pos, vis, lane, warp);
  __syncthreads();
  group_softmax<kGroupHeads>(probs, cap, nr, s_max, s_sum, lane, warp);
  __syncthreads();
  // Output sums: a thread per pair of dimensions (head_dim is even: attention_uses_head_groups).
  for (int i = 2 * threadIdx.x; i < D; i += 2 * kThreads) {
    float2 acc[kGroupHeads];
    group_accumulate<kGroupHeads>(rows, probs, cap, nr, i, acc);
#pragma unroll
    for (int g = 0; g < kGroupHeads; ++g) {
      if (g < nh) {
        float* ws = split_partials(p) + (static_cast<int64_t>(h0 + g) * p.splits + j) * (D + 2);
        ws[i] = acc[g].x;
        ws[i + 1] = acc[g].y;
      }
    }
  }
  if (threadIdx.x < nh) {
    float* ws = split_partials(p) + (static_cast<int64_t>(h0 + threadIdx.x) * p.splits + j) * (D + 2);
    ws[D] = s_max[threadIdx.x];
    ws[D + 1] = s_sum[threadIdx.x];
  }
}

// Splits the fused kernel computes for n visible rows (attention_splits_in_use).
__host__ __device__ __forceinline__ int splits_in_use(const AttentionLaunch& p, int n) {
  if (!p.fit_splits) return p.splits;
  const int cap = split_capacity(p);
  const int used = cap > 0 ? (n + cap - 1) / cap : 1;
  return used < 1 ? 1 : (used > p.splits ? p.splits : used);
}

constexpr int kQVecPerLane = 8;  // q rows of up to 8 * 32 * 4 = 1024 values
constexpr int kMaxRopePairs = 256;  // the fused kernel's RoPE frequencies in shared memory
// Three blocks per SM (at most 85 registers a thread): the 320 blocks of a ratio-4 layer
// (10 splits x 32 head pairs) then fit in one wave on the H200's 132 SMs (two blocks per
// SM, at 125 registers, took two waves: 32 us against 22 us for the separate launches).
constexpr int kFusedBlocksPerSm = 3;

// Head h's q row post by one warp into dst (and `also` when set): RMSNorm without weight
// and RoPE of the tail, with row_post_warp_kernel's arithmetic (cuda/row_ops.cu): lane l
// holds the float4s l, l + 32, ...; the sum of squares in double, reduced over the warp
// in the same order; the same float expressions.
__device__ __forceinline__ void q_row_post(const AttentionLaunch& p, const float* freqs, int h, float rope_pos,
                                           int lane, float* dst, float* also) {
  const int D = p.head_dim, nvec = D / 4;
  const float4* in = reinterpret_cast<const float4*>(p.q + static_cast<int64_t>(h) * D);
  float4 v[kQVecPerLane];
#pragma unroll
  for (int j = 0; j < kQVecPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < nvec) v[j] = in[i];
  }
  double ss = 0.0;
#pragma unroll
  for (int j = 0; j < kQVecPerLane; ++j) {
    if (lane + 32 * j < nvec) {
      ss += static_cast<double>(v[j].x) * v[j].x + static_cast<double>(v[j].y) * v[j].y +
            static_cast<double>(v[j].z) * v[j].z + static_cast<double>(v[j].w) * v[j].w;
    }
  }
  ss = warp_sum_double(ss);
  const float f = rms_scale(ss, D, p.q_norm_eps);
  const float4 w = make_float4(1.0f, 1.0f, 1.0f, 1.0f);  // no learned weight
#pragma unroll
  for (int j = 0; j < kQVecPerLane; ++j) {
    if (lane + 32 * j < nvec) {
      v[j].x = v[j].x * f * w.x;
      v[j].y = v[j].y * f * w.y;
      v[j].z = v[j].z * f * w.z;
      v[j].w = v[j].w * f * w.w;
    }
  }
  if (p.rope_dim > 0) {
    const int tail = D - p.rope_dim;  // even: the pairs lie inside one float4
#pragma unroll
    for (int j = 0; j < kQVecPerLane; ++j) {
      const int i = lane + 32 * j;
      if (i < nvec && 4 * i + 3 >= tail) {
        const int e = 4 * i;
        if (e >= tail) rope_pair(&v[j].x, &v[j].y, rope_pos, freqs[(e - tail) / 2], false);
        rope_pair(&v[j].z, &v[j].w, rope_pos, freqs[(e + 2 - tail) / 2], false);
      }
    }
  }
  float4* out = reinterpret_cast<float4*>(dst);
  float4* out2 = reinterpret_cast<float4*>(also);
#pragma unroll
  for (int j = 0; j < kQVecPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < nvec) {
      out[i] = v[j];
      if (out2) out2[i] = v[j];
    }
  }
}

// Head h's output pair (i, i + 1) from its combined sums: divided by the softmax total,
// the inverse RoPE where the pair lies in the tail, stored. attention_combine_kernel's
// arithmetic.
__device__ __forceinline__ void store_output_pair(const AttentionLaunch& p, const float* freqs, int h, int i,
                                                  float2 sum, float total, int pos) {
  float2 o = make_float2(sum.x / total, sum.y / total);
  const int tail = p.head_dim - p.rope_dim;  // even: attention_fused_applies
  if (i >= tail) rope_pair(&o.x, &o.y, static_cast<float>(pos), freqs[(i - tail) / 2], true);
  *reinterpret_cast<float2*>(p.out + static_cast<int64_t>(h) * p.head_dim + i) = o;
}

// The fold_combine step of a block that has written its split's partials: the block
// counts itself in its group's completion counter, and the last of the group's `used`
// blocks to finish (the counter decides only which) combines every split in split order
// with attention_combine_kernel's arithmetic, then resets the counter. `factor` holds
// kGroupHeads x splits floats of shared memory; s_total and s_last are shared.
// kHeadsTogether: the sums of all the group's heads load their batch of splits together
// (else head after head).
template <int kGroupHeads, int kSplitBatch, bool kHeadsTogether = false>
__device__ __forceinline__ void combine_splits_if_last(const AttentionLaunch& p, const float* s_freq, float* factor,
                                                       float* s_total, int* s_last, int group, int h0, int nh,
                                                       int used, float sink, int pos, int lane, int warp) {
  const int D = p.head_dim;
  const float* partials = split_partials(p);
  // The last block of the group to finish combines; the counter decides only which.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = reinterpret_cast<int*>(p.workspace) + group;
    const int ticket = atomicAdd(counter, 1);
    *s_last = ticket == used - 1;
    if (*s_last) *counter = 0;  // every block of the group has counted: ready for the next launch
    __threadfence();
  }
  __syncthreads();
  if (!*s_last) return;
  __threadfence();
  if (warp < nh) {
    // attention_combine_kernel's factors and total for head h0 + warp: the splits' maxima
    // and sums loaded by the lanes at once (the max does not depend on the order), the
    // total summed in split order as there.
    const float* ws = partials + static_cast<int64_t>(h0 + warp) * p.splits * (D + 2);
    const float sk = __shfl_sync(0xffffffffu, sink, 0);
    float m = sk;
    for (int s = lane; s < used; s += 32) m = fmaxf(m, __ldcg(ws + s * (D + 2) + D));
    m = warp_max(m);
    float z = expf(sk - m);
    for (int s0 = 0; s0 < used; s0 += 32) {
      const int s = s0 + lane;
      float f = 0.0f, l = 0.0f;
      if (s < used) {
        const float mj = __ldcg(ws + s * (D + 2) + D);
        l = __ldcg(ws + s * (D + 2) + D + 1);
        f = mj == -INFINITY ? 0.0f : expf(mj - m);
        factor[warp * p.splits + s] = f;
      }
      const int n = min(32, used - s0);
      for (int k = 0; k < n; ++k) {
        const float fk = __shfl_sync(0xffffffffu, f, k);
        const float lk = __shfl_sync(0xffffffffu, l, k);
        z = __fmaf_rn(fk, lk, z);
      }
    }
    if (lane == 0) s_total[warp] = z;
  }
  __syncthreads();
  if constexpr (kHeadsTogether) {
    // Each thread's pair of every head and kSplitBatch splits loaded before their sums (in
    // split order per head, as attention_combine_kernel's), the outputs stored after the
    // last batch: one round of loads per batch for all the group's heads.
    for (int i = 2 * threadIdx.x; i < D; i += 2 * kThreads) {
      float2 sum[kGroupHeads];
#pragma unroll
      for (int g = 0; g < kGroupHeads; ++g) sum[g] = make_float2(0.0f, 0.0f);
      for (int s0 = 0; s0 < used; s0 += kSplitBatch) {
        float2 v[kGroupHeads][kSplitBatch];
#pragma unroll
        for (int g = 0; g < kGroupHeads; ++g) {
          const float* ws = partials + static_cast<int64_t>(h0 + g) * p.splits * (D + 2);
#pragma unroll
          for (int k = 0; k < kSplitBatch; ++k) {
            if (g < nh && s0 + k < used) v[g][k] = __ldcg(reinterpret_cast<const float2*>(ws + (s0 + k) * (D + 2) + i));
          }
        }
#pragma unroll
        for (int g = 0; g < kGroupHeads; ++g) {
#pragma unroll
          for (int k = 0; k < kSplitBatch; ++k) {
            if (g < nh && s0 + k < used) {
              const float f = factor[g * p.splits + s0 + k];
              if (f != 0.0f) {
                sum[g].x = __fmaf_rn(f, v[g][k].x, sum[g].x);
                sum[g].y = __fmaf_rn(f, v[g][k].y, sum[g].y);
              }
            }
          }
        }
      }
#pragma unroll
      for (int g = 0; g < kGroupHeads; ++g) {
        if (g < nh) store_output_pair(p, s_freq, h0 + g, i, sum[g], s_total[g], pos);
      }
    }
  } else {
    // Each thread's pair of every split loaded kSplitBatch splits at a time before the sums
    // (in split order, as attention_combine_kernel's).
    for (int i = 2 * threadIdx.x; i < D; i += 2 * kThreads) {
#pragma unroll
      for (int g = 0; g < kGroupHeads; ++g) {
        if (g >= nh) continue;
        const float* ws = partials + static_cast<int64_t>(h0 + g) * p.splits * (D + 2);
        float2 sum = make_float2(0.0f, 0.0f);
        for (int s0 = 0; s0 < used; s0 += kSplitBatch) {
          float2 v[kSplitBatch];
#pragma unroll
          for (int k = 0; k < kSplitBatch; ++k) {
            if (s0 + k < used) v[k] = __ldcg(reinterpret_cast<const float2*>(ws + (s0 + k) * (D + 2) + i));
          }
#pragma unroll
          for (int k = 0; k < kSplitBatch; ++k) {
            if (s0 + k < used) {
              const float f = factor[g * p.splits + s0 + k];
              if (f != 0.0f) {
                sum.x = __fmaf_rn(f, v[k].x, sum.x);
                sum.y = __fmaf_rn(f, v[k].y, sum.y);
              }
            }
          }
        }
        store_output_pair(p, s_freq, h0 + g, i, sum, s_total[g], pos);
      }
    }
  }
}

// The fused form of the head-group kernel, block (split j, head group g): optionally the
// q row post on load (q_norm_rope), the same scores, softmax pieces and output sums, then
// (fold_combine) the combine: at once when one split is in use, else by the last block
// of the group to finish (a completion counter per group, reset by that block), which
// reads every split's partials in split order. Each step keeps the arithmetic of the
// separate launches (row_post_warp_kernel, attention_group_partial_kernel,
// attention_combine_kernel), so the results are the same bits.
// The pieces the fused and staged kernels share.

// The group's q rows into shared memory q ([kGroupHeads][D]): normalised and rotated here
// (q_norm_rope; split 0 also writes them to q_out) or copied; rows past the group's nh
// heads zero.
template <int kGroupHeads>
__device__ __forceinline__ void load_group_q(const AttentionLaunch& p, const float* s_freq, int D, int h0, int nh,
                                             int j, int pos, int lane, int warp, float* q) {
  if (p.q_norm_rope) {
    if (warp < nh) {
      float* also = j == 0 && p.q_out ? p.q_out + static_cast<int64_t>(h0 + warp) * D : nullptr;
      q_row_post(p, s_freq, h0 + warp, static_cast<float>(pos), lane, q + warp * D, also);
    } else if (warp < kGroupHeads) {
      for (int i = lane; i < D; i += 32) q[warp * D + i] = 0.0f;
    }
  } else {
    for (int i = threadIdx.x; i < kGroupHeads * D; i += kThreads) {
      q[i] = i < nh * D ? p.q[static_cast<int64_t>(h0) * D + i] : 0.0f;
    }
  }
}

// The split's max and sum of each of the group's heads, after its partial sums.
__device__ __forceinline__ void store_split_max_sum(const AttentionLaunch& p, const float* s_max, const float* s_sum,
                                                    int D, int h0, int nh, int j) {
  if (threadIdx.x < nh) {
    float* ws = split_partials(p) + (static_cast<int64_t>(h0 + threadIdx.x) * p.splits + j) * (D + 2);
    ws[D] = s_max[threadIdx.x];
    ws[D + 1] = s_sum[threadIdx.x];
  }
}

// attention_combine_kernel with one split: a head's factor and softmax total from its
// split's max and sum and its sink.
__device__ __forceinline__ void single_split_total(float sink, float mj, float sum, float* factor, float* total) {
  const float m = fmaxf(sink, mj);
  float z = expf(sink - m);
  const float f = mj == -INFINITY ? 0.0f : expf(mj - m);
  z = __fmaf_rn(f, sum, z);  // as the combine kernel compiles it (no fusing into expf)
  *factor = f;
  *total = z;
}

// The group's output sums, pair by pair (accumulate(i, acc) gives every head's pair i of
// the split's probability-weighted rows): with one split (single) scaled and stored as
// outputs; else stored as the split's partials (store_split_max_sum adds each head's max
// and sum after them).
template <int kGroupHeads, typename Accumulate>
__device__ __forceinline__ void store_group_outputs(const AttentionLaunch& p, const float* s_freq,
                                                    const float* s_factor, const float* s_total, int D, int h0, int nh,
                                                    int j, int pos, bool single, Accumulate accumulate) {
  float* partials = split_partials(p);
  for (int i = 2 * threadIdx.x; i < D; i += 2 * kThreads) {
    float2 acc[kGroupHeads];
    accumulate(i, acc);
#pragma unroll
    for (int g = 0; g < kGroupHeads; ++g) {
      if (g >= nh) continue;
      if (single) {
        const float f = s_factor[g];
        float2 sum = make_float2(0.0f, 0.0f);
        if (f != 0.0f) {
          sum.x = __fmaf_rn(f, acc[g].x, sum.x);
          sum.y = __fmaf_rn(f, acc[g].y, sum.y);
        }
        store_output_pair(p, s_freq, h0 + g, i, sum, s_total[g], pos);
      } else {
        float* ws = partials + (static_cast<int64_t>(h0 + g) * p.splits + j) * (D + 2);
        ws[i] = acc[g].x;
        ws[i + 1] = acc[g].y;
      }
    }
  }
}

template <int kGroupHeads>
__global__ void __launch_bounds__(kThreads, kFusedBlocksPerSm) attention_fused_kernel(AttentionLaunch p) {
  // Before the wait: weights only (the RoPE frequencies, the group's sinks).
  __shared__ float s_freq[kMaxRopePairs];
  for (int i = threadIdx.x; i < p.rope_dim / 2; i += kThreads) s_freq[i] = p.rope_freqs[i];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j = blockIdx.x, group = blockIdx.y, h0 = group * kGroupHeads;
  const int nh = min(kGroupHeads, p.heads - h0);
  const float sink = warp < nh && lane == 0 ? p.sinks[h0 + warp] : 0.0f;
  __syncthreads();  // s_freq complete
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  extern __shared__ __align__(16) unsigned char group_shared[];
  const int cap = split_capacity(p);
  const int D = p.head_dim;
  const float** rows = reinterpret_cast<const float**>(group_shared);
  float* q = reinterpret_cast<float*>(group_shared + row_table_bytes(cap));  // [G][D]
  float* probs = q + kGroupHeads * D;                                               // [G][cap]
  float* factor = probs + kGroupHeads * cap;                                        // [G][splits]
  __shared__ float s_max[kGroupHeads], s_sum[kGroupHeads], s_total[kGroupHeads], s_factor[kGroupHeads];
  __shared__ int s_last;
  const int pos = *p.pos;
  const int active = p.ratio == 4 ? *p.active : 0;
  const Visible vis = visible_rows(p, pos, active);
  const int used = splits_in_use(p, vis.n);
  if (j >= used) return;  // fit_splits: a split without rows
  const int chunk = (vis.n + used - 1) / used;
  const int r0 = j * chunk;
  const int nr = max(0, min(vis.n, r0 + chunk) - r0);

  // The row table first, each row's lines asked into L2 at once (the score loop then
  // finds them there), while the q rows load and go through their post.
  for (int r = threadIdx.x; r < nr; r += kThreads) {
    const float* row = visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r);
    rows[r] = row;
    prefetch_l2_range(row, sizeof(float) * static_cast<int64_t>(D), 0, 1, 64);
  }
  load_group_q<kGroupHeads>(p, s_freq, D, h0, nh, j, pos, lane, warp, q);
  __syncthreads();
  group_scores<kGroupHeads>(p, rows, q, probs, cap, nr, r0, pos, vis, lane, warp);
  __syncthreads();
  group_softmax<kGroupHeads>(probs, cap, nr, s_max, s_sum, lane, warp);
  const bool single = used == 1 && (p.fold_combine || p.fit_splits);
  if (single && warp < nh && lane == 0) single_split_total(sink, s_max[warp], s_sum[warp], &s_factor[warp], &s_total[warp]);
  __syncthreads();
  store_group_outputs<kGroupHeads>(p, s_freq, s_factor, s_total, D, h0, nh, j, pos, single,
                                   [&](int i, float2 (&acc)[kGroupHeads]) { group_accumulate<kGroupHeads>(rows, probs, cap, nr, i, acc); });
  if (single) return;
  store_split_max_sum(p, s_max, s_sum, D, h0, nh, j);
  if (!p.fold_combine) return;
  combine_splits_if_last<kGroupHeads, 8>(p, s_freq, factor, s_total, &s_last, group, h0, nh, used, sink, pos,
                                         lane, warp);
}

// ---------------------------------------------------------------- staged kernel

// Two blocks per SM (at most 128 registers a thread): the scores hold up to four heads'
// q slices in registers.
constexpr int kStagedBlocksPerSm = 2;

__device__ __forceinline__ void staged_copy16(void* shared, const void* global) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(global) : "memory");
}

__device__ __forceinline__ void staged_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

__device__ __forceinline__ void staged_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

// Shared memory of the staged kernel: the split's rows [cap][D], the group's q [G][D],
// the row table, the scores [G][cap] and the combine factors [G][splits].
__host__ __device__ __forceinline__ size_t staged_rows_bytes(int cap, int D) {
  return sizeof(float) * static_cast<size_t>(cap) * D;
}

// The stride of a head's scores: the split capacity rounded up to whole float4s.
__host__ __device__ __forceinline__ int staged_score_stride(int cap) { return (cap + 3) / 4 * 4; }

size_t staged_shared_bytes(const AttentionLaunch& p, int group) {
  const int cap = split_capacity(p);
  return staged_rows_bytes(cap, p.head_dim) + sizeof(float) * static_cast<size_t>(group) * p.head_dim +
         row_table_bytes(cap) + sizeof(float) * static_cast<size_t>(group) * (staged_score_stride(cap) + p.splits);
}

// q . row over one lane's four float4 slices (k * 128 + 4 * lane), in the order of
// group_dots_vec4 (the same expressions, so the same fused multiply-adds).
__device__ __forceinline__ float lane_dot_vec4(const float4 (&qv)[4], const float4 (&v)[4], int D) {
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (k * 128 < D) {
      s += qv[k].x * v[k].x;
      s += qv[k].y * v[k].y;
      s += qv[k].z * v[k].z;
      s += qv[k].w * v[k].w;
    }
  }
  return s;
}

// Scores of the split's nr staged rows for every head of the group into probs[g * cap + r]
// (cap: the heads' stride; scale applied; absent tagged rows -INFINITY), group_scores'
// values bit for bit: the warps form teams of up to four heads each, a warp holds its
// team's q slices in registers and takes two rows at a time; the per-lane sums of all the
// (row, head) pairs are reduced together (warp_reduce_scatter: the pairings of warp_sum,
// so the same sums).
template <int kGroupHeads>
__device__ __forceinline__ void staged_scores(const AttentionLaunch& p, const float* stage, const float* q,
                                              float* probs, int cap, int nr, int r0, int pos, const Visible& vis,
                                              int lane, int warp) {
  constexpr int kHeadsPerWarp = kGroupHeads < 4 ? kGroupHeads : 4;
  constexpr int kTeams = kGroupHeads / kHeadsPerWarp;
  constexpr int kTeamWarps = (kThreads / 32) / kTeams;
  constexpr int kValues = 2 * kHeadsPerWarp;
  constexpr int kShift = kReduceScatterShift<kValues>;
  const int D = p.head_dim;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
  const int team = warp / kTeamWarps, team_warp = warp % kTeamWarps;
  const int head0 = team * kHeadsPerWarp;
  const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float4 qv[kHeadsPerWarp][4];
#pragma unroll
  for (int g = 0; g < kHeadsPerWarp; ++g) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      qv[g][k] = k * 128 < D ? *reinterpret_cast<const float4*>(q + (head0 + g) * D + k * 128 + 4 * lane) : zero;
    }
  }
  for (int r = 2 * team_warp; r < nr; r += 2 * kTeamWarps) {
    const bool second = r + 1 < nr;
    float4 v0[4], v1[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v0[k] = k * 128 < D ? *reinterpret_cast<const float4*>(stage + r * D + k * 128 + 4 * lane) : zero;
      v1[k] = second && k * 128 < D ? *reinterpret_cast<const float4*>(stage + (r + 1) * D + k * 128 + 4 * lane)
                                     : zero;
    }
    float sums[kValues];
#pragma unroll
    for (int g = 0; g < kHeadsPerWarp; ++g) {
      sums[g] = lane_dot_vec4(qv[g], v0, D);
      sums[kHeadsPerWarp + g] = lane_dot_vec4(qv[g], v1, D);
    }
    const float d = warp_reduce_scatter<kValues>(sums, lane);
    if ((lane & ((1 << kShift) - 1)) == 0) {
      const int value = lane >> kShift;
      const int row = r + value / kHeadsPerWarp, g = head0 + value % kHeadsPerWarp;
      if (row < nr) probs[g * cap + row] = raw_row_absent(p, pos, vis.nraw, r0 + row) ? -INFINITY : d * scale;
    }
  }
}

// Output sums of dimensions (i, i + 1) for every head of the group over the staged rows,
// in row order: group_accumulate's sums. `stride` (a multiple of 4) separates the heads'
// scores, read four rows at a time.
template <int kGroupHeads>
__device__ __forceinline__ void staged_accumulate(const float* stage, int D, const float* probs, int stride, int nr,
                                                  int i, float2 (&acc)[kGroupHeads]) {
#pragma unroll
  for (int g = 0; g < kGroupHeads; ++g) acc[g] = make_float2(0.0f, 0.0f);
  int r = 0;
  for (; r + 4 <= nr; r += 4) {
    float2 a[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) a[k] = *reinterpret_cast<const float2*>(stage + (r + k) * D + i);
#pragma unroll
    for (int g = 0; g < kGroupHeads; ++g) {
      const float4 p4 = *reinterpret_cast<const float4*>(probs + g * stride + r);
      const float pr[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        acc[g].x += pr[k] * a[k].x;
        acc[g].y += pr[k] * a[k].y;
      }
    }
  }
  for (; r < nr; ++r) {
    const float2 a = *reinterpret_cast<const float2*>(stage + r * D + i);
#pragma unroll
    for (int g = 0; g < kGroupHeads; ++g) {
      acc[g].x += probs[g * stride + r] * a.x;
      acc[g].y += probs[g * stride + r] * a.y;
    }
  }
}

// Block (split j, head group g) of the staged kernel: attention_fused_kernel's steps and
// arithmetic (q row post on load, scores, softmax pieces, output sums, the single-split
// output or the partials and the folded combine), with the split's rows copied into
// shared memory first, every copy in flight at once, while the q post runs. Both passes
// read the rows from shared memory.
template <int kGroupHeads>
__global__ void __launch_bounds__(kThreads, kStagedBlocksPerSm) attention_staged_kernel(AttentionLaunch p) {
  // Before the wait: weights only (the RoPE frequencies, the group's sinks).
  __shared__ float s_freq[kMaxRopePairs];
  for (int i = threadIdx.x; i < p.rope_dim / 2; i += kThreads) s_freq[i] = p.rope_freqs[i];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j = blockIdx.x, group = blockIdx.y, h0 = group * kGroupHeads;
  const int nh = min(kGroupHeads, p.heads - h0);
  const float sink = warp < nh && lane == 0 ? p.sinks[h0 + warp] : 0.0f;
  __syncthreads();  // s_freq complete
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  extern __shared__ __align__(16) unsigned char staged_shared[];
  const int cap = split_capacity(p);
  const int stride = staged_score_stride(cap);
  const int D = p.head_dim;
  float* stage = reinterpret_cast<float*>(staged_shared);                                    // [cap][D]
  float* q = stage + static_cast<size_t>(cap) * D;                                          // [G][D]
  const float** rows = reinterpret_cast<const float**>(q + kGroupHeads * D);                // [cap]
  float* probs = reinterpret_cast<float*>(staged_shared + staged_rows_bytes(cap, D) +
                                          sizeof(float) * kGroupHeads * D + row_table_bytes(cap));  // [G][cap]
  float* factor = probs + kGroupHeads * stride;                                              // [G][splits]
  __shared__ float s_max[kGroupHeads], s_sum[kGroupHeads], s_total[kGroupHeads], s_factor[kGroupHeads];
  __shared__ int s_last;
  const int pos = *p.pos;
  const int active = p.ratio == 4 ? *p.active : 0;
  const Visible vis = visible_rows(p, pos, active);
  const int used = splits_in_use(p, vis.n);
  if (j >= used) return;  // fit_splits: a split without rows
  const int chunk = (vis.n + used - 1) / used;
  const int r0 = j * chunk;
  const int nr = max(0, min(vis.n, r0 + chunk) - r0);

  for (int r = threadIdx.x; r < nr; r += kThreads) rows[r] = visible_row(p, pos, vis.nraw, vis.use_selection, r0 + r);
  __syncthreads();
  const int vecs = D / 4;
  for (int e = threadIdx.x; e < nr * vecs; e += kThreads) {
    const int r = e / vecs, c = e - r * vecs;
    staged_copy16(stage + r * D + 4 * c, rows[r] + 4 * c);
  }
  staged_commit();
  load_group_q<kGroupHeads>(p, s_freq, D, h0, nh, j, pos, lane, warp, q);
  staged_wait_all();
  __syncthreads();
  staged_scores<kGroupHeads>(p, stage, q, probs, stride, nr, r0, pos, vis, lane, warp);
  __syncthreads();
  group_softmax<kGroupHeads>(probs, stride, nr, s_max, s_sum, lane, warp);
  const bool single = used == 1 && (p.fold_combine || p.fit_splits);
  if (single && warp < nh && lane == 0) single_split_total(sink, s_max[warp], s_sum[warp], &s_factor[warp], &s_total[warp]);
  __syncthreads();
  store_group_outputs<kGroupHeads>(
      p, s_freq, s_factor, s_total, D, h0, nh, j, pos, single,
      [&](int i, float2 (&acc)[kGroupHeads]) { staged_accumulate<kGroupHeads>(stage, D, probs, stride, nr, i, acc); });
  if (single) return;
  store_split_max_sum(p, s_max, s_sum, D, h0, nh, j);
  if (!p.fold_combine) return;
  // Batches of 24 / G splits: 48 registers of loads in flight for every head of the group.
  combine_splits_if_last<kGroupHeads, 24 / kGroupHeads, true>(p, s_freq, factor, s_total, &s_last, group, h0, nh,
                                                              used, sink, pos, lane, warp);
}

// Block h: combines the splits with the sink, normalises, applies the inverse RoPE.
__global__ void __launch_bounds__(kThreads) attention_combine_kernel(AttentionLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  extern __shared__ float shared[];
  float* o = shared;
  float* factor = shared + p.head_dim;
  __shared__ float total;
  const int h = blockIdx.x;
  const int pos = *p.pos;
  // fit_splits (fused kernel): the splits in use; with one, that kernel wrote the output.
  const int used = p.fit_splits ? splits_in_use(p, visible_rows(p, pos).n) : p.splits;
  if (p.fit_splits && used == 1) return;
  const float* ws = split_partials(p) + static_cast<int64_t>(h) * p.splits * (p.head_dim + 2);
  if (threadIdx.x == 0) {
    const float sink = p.sinks[h];
    float m = sink;
    for (int j = 0; j < used; ++j) m = fmaxf(m, ws[j * (p.head_dim + 2) + p.head_dim]);
    float z = expf(sink - m);
    for (int j = 0; j < used; ++j) {
      const float mj = ws[j * (p.head_dim + 2) + p.head_dim];
      const float f = mj == -INFINITY ? 0.0f : expf(mj - m);
      factor[j] = f;
      z = __fmaf_rn(f, ws[j * (p.head_dim + 2) + p.head_dim + 1], z);  // fused as written
    }
    total = z;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < p.head_dim; i += kThreads) {
    float acc = 0.0f;
    for (int j = 0; j < used; ++j) {
      if (factor[j] != 0.0f) acc = __fmaf_rn(factor[j], ws[j * (p.head_dim + 2) + i], acc);
    }
    o[i] = acc / total;
  }
  __syncthreads();
  float* tail = o + p.head_dim - p.rope_dim;
  for (int j = threadIdx.x; j < p.rope_dim / 2; j += kThreads) {
    rope_pair(&tail[2 * j], &tail[2 * j + 1], static_cast<float>(pos), p.rope_freqs[j], true);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < p.head_dim; i += kThreads) p.out[h * p.head_dim + i] = o[i];
}

}  // namespace

Status attention_init() {
  static const Status status = [] {
    DS4_RETURN_IF_ERROR(cuda_status(
        cudaFuncSetAttribute(attention_partial_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             96 * 1024),
        "raising the attention kernel's shared memory limit"));
    for (const void* kernel : {reinterpret_cast<const void*>(attention_group_partial_kernel<2>),
                               reinterpret_cast<const void*>(attention_group_partial_kernel<4>),
                               reinterpret_cast<const void*>(attention_group_partial_kernel<8>)}) {
      DS4_RETURN_IF_ERROR(cuda_status(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024),
          "raising the head-group attention kernel's shared memory limit"));
    }
    for (const void* kernel : {reinterpret_cast<const void*>(attention_fused_kernel<2>),
                               reinterpret_cast<const void*>(attention_fused_kernel<4>),
                               reinterpret_cast<const void*>(attention_fused_kernel<8>)}) {
      DS4_RETURN_IF_ERROR(cuda_status(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024),
          "raising the fused attention kernel's shared memory limit"));
    }
    for (const void* kernel : {reinterpret_cast<const void*>(attention_staged_kernel<2>),
                               reinterpret_cast<const void*>(attention_staged_kernel<4>),
                               reinterpret_cast<const void*>(attention_staged_kernel<8>)}) {
      cudaFuncAttributes attributes{};
      DS4_RETURN_IF_ERROR(cuda_status(cudaFuncGetAttributes(&attributes, kernel),
                                      "reading the staged attention kernel's attributes"));
      const int room = max_shared_per_block() - static_cast<int>(attributes.sharedSizeBytes);
      DS4_RETURN_IF_ERROR(cuda_status(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, std::max(room, 0)),
          "raising the staged attention kernel's shared memory limit"));
      // Two blocks of ~90 KiB per SM need the largest shared-memory carveout.
      DS4_RETURN_IF_ERROR(cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                                           cudaSharedmemCarveoutMaxShared),
                                      "preferring shared memory for the staged attention kernel"));
    }
    return Status::Ok();
  }();
  return status;
}

bool attention_uses_head_groups(const AttentionLaunch& p) {
  // Row pairs are read as float2: even rows, 8-byte aligned bases.
  const bool pairs = p.head_dim % 2 == 0 && reinterpret_cast<uintptr_t>(p.raw) % 8 == 0 &&
                     reinterpret_cast<uintptr_t>(p.comp) % 8 == 0;
  return !p.per_head_blocks && p.splits >= 1 && pairs &&
         head_group_shared_bytes(p, group_heads(p)) <= 96 * 1024;
}

int attention_head_group(const AttentionLaunch& p) {
  return attention_uses_head_groups(p) ? group_heads(p) : 1;
}

// Static shared memory of the staged kernel (the RoPE frequencies and the per-head
// values): an upper bound, so the check needs no device query per launch.
constexpr int kStagedStaticShared = sizeof(float) * (kMaxRopePairs + 4 * kAttentionGroupHeads) + 64;

bool attention_staged_applies(const AttentionLaunch& p) {
  const int g = p.head_group;
  auto aligned = [](const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; };
  if (p.per_head_blocks || p.splits < 1 || (g != 2 && g != 4 && g != 8)) return false;
  if (p.head_dim <= 0 || p.head_dim % 128 != 0 || p.head_dim > 512) return false;
  if (p.rope_dim < 0 || p.rope_dim % 2 != 0 || p.rope_dim > p.head_dim || p.rope_dim / 2 > kMaxRopePairs) return false;
  if (!aligned(p.raw, 16) || !aligned(p.comp, 16) || !aligned(p.out, 8)) return false;
  return static_cast<int64_t>(staged_shared_bytes(p, g)) + kStagedStaticShared <= max_shared_per_block();
}

bool attention_fused_applies(const AttentionLaunch& p) {
  if (p.staged) return attention_staged_applies(p);
  return attention_uses_head_groups(p) && p.rope_dim >= 0 && p.rope_dim % 2 == 0 && p.rope_dim <= p.head_dim &&
         p.rope_dim / 2 <= kMaxRopePairs &&
         reinterpret_cast<uintptr_t>(p.out) % 8 == 0 && fused_shared_bytes(p, group_heads(p)) <= 96 * 1024;
}

bool attention_folds_q_post(const AttentionLaunch& p) {
  auto aligned16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return attention_fused_applies(p) && p.head_dim % 4 == 0 && p.head_dim <= 32 * 4 * kQVecPerLane &&
         aligned16(p.q) && aligned16(p.q_out);
}

int attention_splits_in_use(const AttentionLaunch& p, int rows) { return splits_in_use(p, rows); }

AttentionPlan attention_staged_plan(int max_visible, int rows_per_split, int head_group, int max_splits) {
  AttentionPlan plan;
  const int rows = std::max(max_visible, 1), per_split = std::max(rows_per_split, 1);
  plan.splits = std::clamp((rows + per_split - 1) / per_split, 1, std::max(max_splits, 1));
  plan.head_group = head_group;
  plan.staged = true;
  return plan;
}

AttentionPlan attention_decode_plan(int heads, int head_dim, int max_visible, int ratio, int max_splits) {
  // Ratio 4 (640 rows from 2k context on): 16 splits of 40 rows for groups of four heads,
  // 256 blocks of two per SM in one wave on the H200, each row read by 16 blocks. The
  // others (128 raw rows, plus one compressed row per 128 tokens): splits of 32 rows and
  // head pairs, so that the few rows present still spread over many blocks.
  const AttentionPlan staged =
      ratio == 4 ? attention_staged_plan(max_visible, 40, 4, max_splits) : attention_staged_plan(max_visible, 32, 2, max_splits);
  // Off unless DS4_CUDA_STAGED_ATTENTION=1: in the whole decode on the H200 the staged
  // plan measured slower (context 0 / 4k / 16k: 161.8 / 147.6 / 140.6 t/s against 169.2 /
  // 149.6 / 146.3 with the fused kernel), though alone it gains at 4k (ratio 4: 23.0 us
  // against 23.8; ratio 0: 12.1 against 13.5).
  static const bool staged_enabled = [] {
    const char* v = std::getenv("DS4_CUDA_STAGED_ATTENTION");
    return v != nullptr && std::string(v) == "1";
  }();
  AttentionLaunch probe;
  probe.heads = heads;
  probe.head_dim = head_dim;
  probe.rope_dim = 0;
  probe.max_visible = max_visible;
  probe.splits = staged.splits;
  probe.head_group = staged.head_group;
  probe.staged = true;
  if (staged_enabled && attention_staged_applies(probe)) return staged;
  AttentionPlan fused;
  fused.splits = std::clamp(max_visible / 64, 1, std::max(max_splits, 1));
  fused.head_group = 2;
  return fused;
}

bool attention_fusion_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("DS4_CUDA_FUSED_ATTENTION");
    return v == nullptr || std::string(v) != "0";
  }();
  return enabled;
}

namespace {

// The staged kernel for `p` (attention_staged_applies holds; the caller checked).
void launch_staged(const AttentionLaunch& p, cudaStream_t stream) {
  const int g = p.head_group;
  const dim3 grid(p.splits, (p.heads + g - 1) / g);
  const size_t bytes = staged_shared_bytes(p, g);
  if (g == 8) {
    launch_kernel(attention_staged_kernel<8>, grid, kThreads, bytes, stream, p);
  } else if (g == 4) {
    launch_kernel(attention_staged_kernel<4>, grid, kThreads, bytes, stream, p);
  } else {
    launch_kernel(attention_staged_kernel<2>, grid, kThreads, bytes, stream, p);
  }
}

// The fused kernel for `p` (attention_fused_applies holds; the caller checked).
Status launch_fused(const AttentionLaunch& p, cudaStream_t stream) {
  const int g = group_heads(p);
  const dim3 grid(p.splits, (p.heads + g - 1) / g);
  const size_t bytes = fused_shared_bytes(p, g);
  if (p.staged) {
    launch_staged(p, stream);
  } else if (g == 8) {
    launch_kernel(attention_fused_kernel<8>, grid, kThreads, bytes, stream, p);
  } else if (g == 4) {
    launch_kernel(attention_fused_kernel<4>, grid, kThreads, bytes, stream, p);
  } else {
    launch_kernel(attention_fused_kernel<2>, grid, kThreads, bytes, stream, p);
  }
  DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "fused attention launch"));
  if (p.fold_combine) return Status::Ok();
  launch_kernel(attention_combine_kernel, p.heads, kThreads, sizeof(float) * (p.head_dim + p.splits), stream, p);
  return cuda_status(cudaGetLastError(), "attention combine launch");
}

}  // namespace

int attention_staged_blocks_per_sm(const AttentionLaunch& p) {
  if (!attention_init().ok() || !attention_staged_applies(p)) return 0;
  const size_t bytes = staged_shared_bytes(p, p.head_group);
  int blocks = 0;
  cudaError_t e = cudaSuccess;
  if (p.head_group == 8) {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, attention_staged_kernel<8>, kThreads, bytes);
  } else if (p.head_group == 4) {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, attention_staged_kernel<4>, kThreads, bytes);
  } else {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, attention_staged_kernel<2>, kThreads, bytes);
  }
  return e == cudaSuccess ? blocks : 0;
}

Status launch_attention_decode(const AttentionLaunch& p, cudaStream_t stream) {
  if (p.splits < 1 || !p.workspace) return Status::Error("attention: no split workspace");
  const int chunk = (p.max_visible + p.splits - 1) / p.splits;
  const size_t shared = sizeof(float) * (p.head_dim + chunk);
  if (shared > 96 * 1024) return Status::Error("attention: too many visible rows for shared memory");
  DS4_RETURN_IF_ERROR(attention_init());
  if (p.staged && !attention_staged_applies(p)) {
    return Status::Error("attention: the staged kernel cannot run this launch (head_dim " +
                         std::to_string(p.head_dim) + ", head_group " + std::to_string(p.head_group) + ", splits " +
                         std::to_string(p.splits) + ", up to " + std::to_string(chunk) +
                         " rows a split): it needs head_dim a multiple of 128 up to 512, head_group 2, 4 or 8, "
                         "16-byte aligned rows and the split's rows within the device's shared memory");
  }
  if (p.q_norm_rope || p.fold_combine || p.fit_splits || p.staged) {
    if (!attention_fused_applies(p)) {
      return Status::Error("attention: the fused kernel cannot run this launch (head_dim " +
                           std::to_string(p.head_dim) + ", rope_dim " + std::to_string(p.rope_dim) +
                           ", splits " + std::to_string(p.splits) +
                           "): it needs the head-group kernel, an even rope_dim up to 512, an 8-byte aligned output "
                           "and its shared memory within 96 KiB");
    }
    if (p.q_norm_rope && !attention_folds_q_post(p)) {
      return Status::Error("attention: the q norm and RoPE cannot be folded in for head_dim " +
                           std::to_string(p.head_dim) +
                           " (needs a multiple of 4 up to 1024 and 16-byte aligned q and q_out)");
    }
    return launch_fused(p, stream);
  }
  if (attention_uses_head_groups(p)) {
    const int g = group_heads(p);
    const dim3 grid(p.splits, (p.heads + g - 1) / g);
    const size_t bytes = head_group_shared_bytes(p, g);
    if (g == 8) {
      launch_kernel(attention_group_partial_kernel<8>, grid, kThreads, bytes, stream, p);
    } else if (g == 4) {
      launch_kernel(attention_group_partial_kernel<4>, grid, kThreads, bytes, stream, p);
    } else {
      launch_kernel(attention_group_partial_kernel<2>, grid, kThreads, bytes, stream, p);
    }
  } else {
    launch_kernel(attention_partial_kernel, dim3(p.heads, p.splits), kThreads, shared, stream, p);
  }
  DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "attention launch"));
  launch_kernel(attention_combine_kernel, p.heads, kThreads, sizeof(float) * (p.head_dim + p.splits), stream, p);
  return cuda_status(cudaGetLastError(), "attention combine launch");
}

}  // namespace ds4
