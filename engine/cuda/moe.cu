#include "cuda/moe.h"

#include <cfloat>
#include <climits>
#include <string>

#include "cuda/column_tile.cuh"
#include "cuda/cuda_check.h"
#include "cuda/launch.h"
#include "cuda/matvec.h"

namespace ds4 {
namespace {

constexpr int kMaxExperts = 1024;
constexpr int kMaxUsed = 16;

__device__ float softplus_(float z) { return z > 20.0f ? z : log1pf(expf(z)); }

// Routes token t from its n_experts logits (global or shared memory) with the 32 lanes
// of one warp: scores, selection (lane 0 keeps the chosen set), weights.
__device__ void route_token_warp(const RouterLaunch& p, int64_t t, const float* logits, int lane) {
  __shared__ float score[kMaxExperts];
  __shared__ float key[kMaxExperts];
  __shared__ int chosen[kMaxUsed];
  for (int e = lane; e < p.n_experts; e += 32) {
    const float s = sqrtf(softplus_(logits[e]));
    score[e] = s;
    float k = s + (p.bias ? p.bias[e] : 0.0f);
    key[e] = isnan(k) ? -INFINITY : k;
  }
  __syncwarp();
  if (p.tid2eid) {
    if (lane < p.n_used) {
      int e = p.tid2eid[static_cast<int64_t>(p.token[t]) * p.n_used + lane];
      chosen[lane] = (e >= 0 && e < p.n_experts) ? e : 0;
    }
  } else {
    for (int k = 0; k < p.n_used; ++k) {
      float best = -INFINITY;
      int best_e = INT_MAX;
      for (int e = lane; e < p.n_experts; e += 32) {
        const float v = key[e];
        if (v > best || (v == best && e < best_e)) {
          best = v;
          best_e = e;
        }
      }
      for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, off);
        const int oe = __shfl_xor_sync(0xffffffffu, best_e, off);
        if (ov > best || (ov == best && oe < best_e)) {
          best = ov;
          best_e = oe;
        }
      }
      if (lane == 0) {
        chosen[k] = best_e;
        key[best_e] = NAN;  // never chosen again (NaN compares false)
      }
      __syncwarp();
    }
  }
  __syncwarp();
  if (lane == 0) {
    float sum = 0.0f;
    for (int k = 0; k < p.n_used; ++k) sum += score[chosen[k]];
    sum = fmaxf(sum, 6.103515625e-5f);
    for (int k = 0; k < p.n_used; ++k) {
      const float s = score[chosen[k]];
      p.ids[t * p.n_used + k] = chosen[k];
      p.weights[t * p.n_used + k] = p.route_norm ? p.route_scale * (s / sum) : p.route_scale * s;
    }
  }
}

// One warp per token (block t routes token t: logits, ids, weights and the token id
// advance per token).
__global__ void router_kernel(RouterLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  route_token_warp(p, t, p.logits + t * p.n_experts, threadIdx.x);
}

// launch_router_fused: block (c, y) computes the partial sums of column tile c for
// rows [y * rows_per_block, +rows_per_block) as cuda/column_tile.cuh does; the last
// block to finish adds each row's tiles (one warp per row, in the matvec's reduction
// order) and routes with its first warp.
constexpr int kFusedThreads = 256;  // the matvec column-tile kernel's block size

struct RouterFusedParams {
  RouterLaunch route;
  cuda_detail::TileWeights w;
  const float* x;
  int64_t rows;
  int ns;         // 32-column chunks per row
  int lanes;      // chunks per column tile
  int col_tiles;
  float* partial;  // [row][tile]
  unsigned int* counter;
  float* logits;
};

template <GgmlType T>
__global__ void __launch_bounds__(kFusedThreads) router_fused_kernel(RouterFusedParams p) {
  using namespace cuda_detail;
  __shared__ float4 xs[32 * 8];  // up to 32 chunks of 32 columns
  __shared__ float logits[kMaxExperts];
  __shared__ bool last;
  const int tile = blockIdx.x;
  const int chunk0 = tile * p.lanes;
  const int nc = min(p.ns - chunk0, p.lanes);
  const int group = threadIdx.x / p.lanes;
  const int li = threadIdx.x & (p.lanes - 1);
  const int64_t r = static_cast<int64_t>(blockIdx.y) * (kFusedThreads / p.lanes) + group;
  const bool have = r < p.rows && li < nc;
  typename Chunk<T>::Raw raw{};
  if (have) tile_load_weights<T>(p.w, r, chunk0 + li, &raw);  // immutable: before the wait
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  const float* x = p.x + static_cast<int64_t>(chunk0) * 32;
  for (int j = threadIdx.x; j < nc * 32; j += kFusedThreads) tile_store_x(xs, p.lanes, j, x[j]);
  __syncthreads();
  const float acc = tile_row_partial<T>(raw, have, xs, p.lanes, li);
  if (li == 0 && r < p.rows) p.partial[r * p.col_tiles + tile] = acc;
  // Publish this block's partial sums, then count the block; the last one goes on.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(p.counter, 1u) == gridDim.x * gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int e = warp; e < p.rows; e += kFusedThreads / 32) {
    const float* src = p.partial + e * p.col_tiles;
    // One tile: the matvec stores its sum as is (no reduction).
    const float v = p.col_tiles == 1 ? __ldcg(src) : tile_reduce_warp(src, p.col_tiles, lane);
    if (lane == 0) {
      logits[e] = v;
      if (p.logits) p.logits[e] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) *p.counter = 0;  // ready for the next launch
  if (warp == 0) route_token_warp(p.route, 0, logits, lane);
}

}  // namespace

Status launch_router(const RouterLaunch& p, cudaStream_t stream) { return launch_router(p, 1, stream); }

Status launch_router(const RouterLaunch& p, int n_tokens, cudaStream_t stream) {
  if (p.n_experts <= 0 || p.n_experts > kMaxExperts || p.n_used <= 0 || p.n_used > kMaxUsed ||
      p.n_used > p.n_experts) {
    return Status::Error("router: expert counts out of range (n_experts " + std::to_string(p.n_experts) +
                         ", n_used " + std::to_string(p.n_used) + ")");
  }
  if (n_tokens < 0) return Status::Error("router: negative token count");
  if (p.tid2eid && !p.token) return Status::Error("router: hash routing needs the token ids");
  if (n_tokens == 0) return Status::Ok();
  launch_kernel(router_kernel, n_tokens, 32, 0, stream, p);
  return cuda_status(cudaGetLastError(), "router launch");
}

namespace {

// launch_router_fused's host checks and tiling (the matvec's, with one chunk per lane).
struct RouterFusedPlan {
  int ns = 0;         // 32-column chunks per row
  int lanes = 0;      // chunks per column tile
  int col_tiles = 0;
  int64_t row_tiles = 0;
};

Result<RouterFusedPlan> plan_router_fused(const RouterFusedLaunch& l) {
  const RouterLaunch& p = l.route;
  if (p.n_experts <= 0 || p.n_experts > kMaxExperts || p.n_used <= 0 || p.n_used > kMaxUsed ||
      p.n_used > p.n_experts) {
    return Status::Error("router_fused: expert counts out of range (n_experts " + std::to_string(p.n_experts) +
                         ", n_used " + std::to_string(p.n_used) + ")");
  }
  if (p.tid2eid && !p.token) return Status::Error("router_fused: hash routing needs the token id");
  if (!p.ids || !p.weights) return Status::Error("router_fused: no output for the ids or weights");
  if (!l.x) return Status::Error("router_fused: no input vector");
  if (!l.counter) return Status::Error("router_fused: no block counter");
  if (!l.partial) return Status::Error("router_fused: no partial-sum workspace");
  if (!l.gate || l.gate->empty()) return Status::Error("router_fused: no gate matrix");
  const DeviceMatrix& g = *l.gate;
  if (g.type != GgmlType::F32 && g.type != GgmlType::F16 && g.type != GgmlType::Q8_0) {
    return Status::Error("router_fused: gate matrix type " + std::string(ggml_type_name(g.type)) +
                         " not supported (F32, F16 or Q8_0)");
  }
  if (g.rows != p.n_experts) {
    return Status::Error("router_fused: gate matrix has " + std::to_string(g.rows) + " rows for " +
                         std::to_string(p.n_experts) + " experts");
  }
  MatvecLaunch ml;
  ml.w = &g;
  ml.x = l.x;
  ml.split_workspace = l.partial;
  ml.split_workspace_floats = l.partial_floats;
  ml.tile_partials_only = true;
  ml.tile_chunks_per_lane = 1;
  Result<int> tiles = matvec_tile_columns(ml);
  if (!tiles.ok()) return Status::Error("router_fused: " + tiles.status().message());
  const int ns = static_cast<int>(g.cols / 32);
  const int lanes = cuda_detail::tile_lanes_for(ns, *tiles);  // the matvec's lanes per row group
  if (lanes == 0) {
    return Status::Error("router_fused: no tile width of 1..32 chunks gives the matvec's " + std::to_string(*tiles) +
                         " column tiles over " + std::to_string(ns) + " chunks");
  }
  const int64_t rows_per_block = kFusedThreads / lanes;
  RouterFusedPlan plan;
  plan.ns = ns;
  plan.lanes = lanes;
  plan.col_tiles = *tiles;
  plan.row_tiles = (g.rows + rows_per_block - 1) / rows_per_block;
  if (plan.row_tiles > 65535) return Status::Error("router_fused: too many experts");
  return plan;
}

}  // namespace

Status router_fused_supported(const RouterFusedLaunch& l) { return plan_router_fused(l).status(); }

Status launch_router_fused(const RouterFusedLaunch& l, cudaStream_t stream) {
  Result<RouterFusedPlan> planned = plan_router_fused(l);
  if (!planned.ok()) return planned.status();
  const RouterFusedPlan& plan = *planned;
  const RouterLaunch& p = l.route;
  const DeviceMatrix& g = *l.gate;
  RouterFusedParams f{};
  f.route = p;
  f.w.data = g.data;
  f.w.scales = g.scales;
  f.w.row_bytes = static_cast<int64_t>(g.data_row_bytes());
  f.w.scales_per_row = g.scales_per_row();
  f.x = l.x;
  f.rows = g.rows;
  f.ns = plan.ns;
  f.lanes = plan.lanes;
  f.col_tiles = plan.col_tiles;
  f.partial = l.partial;
  f.counter = l.counter;
  f.logits = l.logits;
  const dim3 grid(static_cast<unsigned>(plan.col_tiles), static_cast<unsigned>(plan.row_tiles));
  switch (g.type) {
    case GgmlType::F32: launch_kernel(router_fused_kernel<GgmlType::F32>, grid, kFusedThreads, 0, stream, f); break;
    case GgmlType::F16: launch_kernel(router_fused_kernel<GgmlType::F16>, grid, kFusedThreads, 0, stream, f); break;
    default: launch_kernel(router_fused_kernel<GgmlType::Q8_0>, grid, kFusedThreads, 0, stream, f); break;
  }
  return cuda_status(cudaGetLastError(), "router_fused launch");
}

}  // namespace ds4
