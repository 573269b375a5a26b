// The column-tile matrix-vector product of cuda/matvec.h (MatvecLaunch::tile_kernel)
// with one weight chunk per lane (MatvecLaunch::tile_chunks_per_lane = 1), as pieces
// that a kernel fusing the product into its own launch calls: it stages its slice of x
// with tile_store_x(), loads its weights with tile_load_weights() (immutable: allowed
// before pdl_wait()), and forms the row's partial sum with tile_row_partial(). The
// sums are formed exactly as the matvec kernel forms them (each chunk's 32 products in
// one fused multiply-add chain, times the chunk factor, then a fixed shuffle tree over
// the row group's lanes), so the partials carry the same bits as a launch_matvec with
// tile_partials_only and the same tiling.
//
// Tiling: `lanes` (a power of two, 1..32) lanes form a row group and each takes one
// 32-column chunk, so a column tile covers lanes * 32 columns; a block of `threads`
// threads holds threads / lanes row groups (one row each). Column tile t, row group g
// of block row y computes row y * (threads / lanes) + g over chunks
// [t * lanes, t * lanes + lanes).
//
// Thread-safety: device functions on the calling thread's data and the block's
// shared memory.
#pragma once

#include <cstdint>

#include "cuda/dequant_chunk.cuh"
#include "format/ggml_type.h"

namespace ds4 {
namespace cuda_detail {

// Host: the lanes per row group (chunks per tile) of launch_matvec's column-tile plan
// with one chunk per lane, from the tile count matvec_tile_columns() gave for a row of
// `ns` chunks: the planner takes widths up to the largest power of two g <= 32 with
// 2 * g <= ns (1 when ns is 1), and among those ceil(ns / g) names g uniquely. 0 when
// no width gives `tiles`.
inline int tile_lanes_for(int64_t ns, int tiles) {
  int top = 1;
  while (top < 32 && 2 * top <= ns) top *= 2;
  for (int g = top; g >= 1; g /= 2) {
    if ((ns + g - 1) / g == tiles) return g;
  }
  return 0;
}

// The weights a fused column tile reads (a DeviceMatrix's first matrix).
struct TileWeights {
  const uint8_t* data = nullptr;
  const uint16_t* scales = nullptr;
  int64_t row_bytes = 0;
  int64_t scales_per_row = 0;
};

// Column j (0 <= j < lanes * 32) of the tile's x slice goes to the float4 slot
// ((j % 32) / 4) * lanes + j / 32, component j % 4: the lanes of a row group read
// consecutive slots, as in the matvec kernel. `xs` holds lanes * 8 float4.
__device__ __forceinline__ void tile_store_x(float4* xs, int lanes, int j, float v) {
  const int chunk = j >> 5, e = j & 31;
  reinterpret_cast<float*>(xs + (e >> 2) * lanes + chunk)[e & 3] = v;
}

// Loads chunk `chunk` of row `r` into `raw`. Immutable weights: may run before pdl_wait().
template <GgmlType T>
__device__ __forceinline__ void tile_load_weights(const TileWeights& w, int64_t r, int chunk,
                                                  typename Chunk<T>::Raw* raw) {
  const uint8_t* row = w.data + r * w.row_bytes;
  const uint16_t* sc = w.scales ? w.scales + r * w.scales_per_row : nullptr;
  *raw = Chunk<T>::load(row, sc, chunk);
}

// The row group's partial sum over its column tile, in every lane of the group. Every
// thread of the warp calls it (the shuffles take the full warp). `have`: this lane's
// chunk exists (row in range and chunk inside the row); `li`: the lane's index in its
// group; `xs`: the tile's x slice as tile_store_x() left it.
template <GgmlType T>
__device__ __forceinline__ float tile_row_partial(const typename Chunk<T>::Raw& raw, bool have, const float4* xs,
                                                  int lanes, int li) {
  float acc = 0.0f;
  if (have) {
    float w[32];
    const float factor = Chunk<T>::dequant(raw, nullptr, w);
    const float4* xv = xs + li;
    float d = 0.0f;
#pragma unroll
    for (int k4 = 0; k4 < 8; ++k4) {
      const float4 xx = xv[k4 * lanes];
      d = fmaf(w[4 * k4], xx.x, d);
      d = fmaf(w[4 * k4 + 1], xx.y, d);
      d = fmaf(w[4 * k4 + 2], xx.z, d);
      d = fmaf(w[4 * k4 + 3], xx.w, d);
    }
    acc = fmaf(d, factor, acc);
  }
  for (int off = lanes >> 1; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  return acc;
}

// The sum of partial[0 .. tiles) as launch_matvec's tile reduction forms it: lane l
// adds tiles l, l + 32, ... in order, then a fixed shuffle tree over the warp. Every
// lane of the warp calls it and gets the sum. `partial` may be written by other blocks
// of the same grid: read through L2 (ld.global.cg), never a stale L1 line.
__device__ __forceinline__ float tile_reduce_warp(const float* partial, int tiles, int lane) {
  float v = 0.0f;
  for (int k = lane; k < tiles; k += 32) v += __ldcg(partial + k);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace cuda_detail
}  // namespace ds4
