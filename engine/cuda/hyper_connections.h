// Manifold-constrained hyper-connections on the GPU (spec/MODEL.md §2.2, §2.3, §2.7):
// embedding into the HC streams, the hc_pre tail (RMS factor, pre/post/comb split,
// Sinkhorn, weighted stream sum, sublayer RMSNorm), hc_post, and the final hc_head.
// The 24 (or 4) mixing projections fn . X come from launch_matvec beforehand.
//
// hc_pre and hc_head run, where they can, as one thread-block cluster (4, 8 or 16
// blocks, HcPreOptions): every block loads its slice of the state, the slices' sums of
// squares meet through distributed shared memory and are added in a fixed order in
// double, a warp of block 0 runs the Sinkhorn beside the weighted stream sum, and every
// block writes its slice of the normalised sublayer input. Results are deterministic
// (no atomics); they equal the single-block kernel's except where the differently
// ordered double sums of squares round to another float (a relative difference of
// about 1e-7, or none). Measured on the H200 (dim 4096, graphs of 40 launches): 4.9 us
// per hc_pre against 9.0 for the single-block kernel; 3.4 with the Sinkhorn deferred
// (HcPreOptions::comb_logits_only; launch_hc_sinkhorn alone 2.9). The single-block kernel
// runs where the cluster kernel does not apply: a stream count other than 4, a dim not
// divisible by 4 x the cluster size or over 3968 x the cluster size, state, output or
// norm weight not 16-byte aligned, a device below sm_90 or without cluster launch, a
// cluster the device cannot hold (hc_pre_cluster_size), or a cluster launch the
// runtime refused once (said on stderr). scale, base and norm_weight are weights: read
// before the PDL wait (cuda/launch.h).
//
// Thread-safety: launches on the caller's stream; the cluster-support cache and the
// DS4_CUDA_HC_PRE_CLUSTER default are process-wide and guarded.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"
#include "format/ggml_type.h"
#include "model/config.h"

namespace ds4 {

struct HcShape {
  int dim = 0;        // E
  int mult = 0;       // number of streams
  int sinkhorn_iters = 0;
  float hc_eps = 1e-6f;
  float norm_eps = 1e-6f;
};

// The model's hyper-connection shape.
inline HcShape hc_shape(const ModelConfig& c) {
  return HcShape{c.dim, c.hc_mult, c.hc_sinkhorn_iters, c.hc_eps, c.norm_eps};
}

// X[h*dim + d] = embedding row (*token) for every stream h. `embd` is F16 or F32.
Status launch_hc_embed(const void* embd, GgmlType type, const int32_t* token, const HcShape& s,
                       float* x, cudaStream_t stream);

// The Sinkhorn of the cluster kernel, both with the CPU reference's operations in its
// order (the same bits as each other and as the single-block kernel's): one comb entry
// per lane with shuffles for the row and column sums (kShuffle), or all 16 entries in
// every lane's registers, no shuffles (kRegisters: measured 4.7x slower on the H200,
// 23.3 against 4.9 us per hc_pre, the 16 divisions per pass running one after another).
enum class HcSinkhorn { kShuffle, kRegisters };

// Which hc_pre / hc_head kernel a launch runs.
struct HcPreOptions {
  // Blocks per cluster: 4, 8 or 16 (16 where the device allows non-portable clusters);
  // 0: the single-block kernel; -1: the process default, DS4_CUDA_HC_PRE_CLUSTER
  // (0, 4, 8 or 16) when set, else 8.
  int cluster = -1;
  HcSinkhorn sinkhorn = HcSinkhorn::kShuffle;
  // hc_pre only, 4 streams: comb receives the Sinkhorn's input logits C0 (spec/MODEL.md
  // §2.3 step 3) instead of its result, and launch_hc_sinkhorn finishes it in place,
  // the same bits. Takes the Sinkhorn off the launch: it can run on another stream
  // beside the sublayer, since comb is first read by the hc_post after it.
  bool comb_logits_only = false;
};

// The cluster size a launch of shape `s` with `options` runs on the current device
// (0: the single-block kernel), for `x` and `out` (nullptr: taken as aligned).
int hc_pre_cluster_size(const HcShape& s, const HcPreOptions& options = {}, const float* x = nullptr,
                        const float* out = nullptr);

// comb (mult x mult logits from an hc_pre with HcPreOptions::comb_logits_only) <-
// the Sinkhorn of them, in place, one warp. 4 streams only.
Status launch_hc_sinkhorn(float* comb, const HcShape& s, cudaStream_t stream,
                          HcSinkhorn sinkhorn = HcSinkhorn::kShuffle);

// Given mix_raw = fn . X (hc_mix values), writes post (mult), comb (mult x mult, [src][dst])
// and out = rmsw(sum_h pre_h X_h, norm_weight) (dim values).
Status launch_hc_pre(const float* x, const float* mix_raw, const float* scale, const float* base,
                     const float* norm_weight, const HcShape& s, float* post, float* comb,
                     float* out, cudaStream_t stream, const HcPreOptions& options = {});

// launch_hc_pre with the mixing projections still split in column tiles: mix value i is
// the sum over k < mix_tiles of mix_partial[i * mix_tiles + k], added in the order of
// the matvec's own tile reduction (the same bits as launch_matvec then launch_hc_pre).
// mix_partial: the split_workspace of a launch_matvec with tile_partials_only set;
// mix_tiles: matvec_tile_columns() of that launch. Saves the reduction launch.
Status launch_hc_pre_partials(const float* x, const float* mix_partial, int mix_tiles, const float* scale,
                              const float* base, const float* norm_weight, const HcShape& s, float* post,
                              float* comb, float* out, cudaStream_t stream, const HcPreOptions& options = {});

// x_out[k] = post_k * f + sum_i comb[i][k] * x_in[i]. With f_add, f stands for the sum
// f + f_add (one f32 addition: a sublayer output left in two parts).
Status launch_hc_post(const float* x_in, const float* f, const float* post, const float* comb,
                      const HcShape& s, float* x_out, cudaStream_t stream, const float* f_add = nullptr);

// Given mix_raw = fn . X (mult values): out = rmsw(sum_h w_h X_h, norm_weight).
Status launch_hc_head(const float* x, const float* mix_raw, const float* scale, const float* base,
                      const float* norm_weight, const HcShape& s, float* out, cudaStream_t stream,
                      const HcPreOptions& options = {});

// launch_hc_head from split partial sums, as launch_hc_pre_partials.
Status launch_hc_head_partials(const float* x, const float* mix_partial, int mix_tiles, const float* scale,
                               const float* base, const float* norm_weight, const HcShape& s, float* out,
                               cudaStream_t stream, const HcPreOptions& options = {});

// launch_hc_post fused with the next mixing projection's column tiles (one launch where
// hc_post and a launch_matvec with tile_partials_only took two): block (t, y) computes
// the new state's columns of column tile t (the hc_post arithmetic, the same bits),
// writes them to x_out (block row y == 0), and forms the tile's partial sums of the
// mixing rows of block row y over them, as the matvec's column-tile kernel does with
// one chunk per lane (cuda/column_tile.cuh). launch_hc_pre_partials or
// launch_hc_head_partials over (mix_partial, hc_post_mix_tiles()) then yields the same
// bits as launch_hc_post + launch_matvec (tile_partials_only, or the plain launch and
// its tile reduction) + launch_hc_pre / launch_hc_head wherever that matvec chooses one
// chunk per lane, which it does for every HC mixing shape of the model (24 or 4 rows of
// hc_mult * dim columns).
struct HcPostMixLaunch {
  const float* x_in = nullptr;    // old state, mult x dim
  const float* f = nullptr;       // sublayer output, dim
  const float* f_add = nullptr;   // optional second part: the output is f + f_add (one f32 addition)
  const float* post = nullptr;    // mult
  const float* comb = nullptr;    // mult x mult, [src][dst]
  HcShape shape;
  float* x_out = nullptr;         // new state, mult x dim (must not overlap x_in)
  // The next mixing projection: rows x (mult * dim), F32, F16 or Q8_0 (its first matrix).
  const DeviceMatrix* mix_fn = nullptr;
  float* mix_partial = nullptr;   // out: partial[row * tiles + tile]
  int64_t mix_partial_floats = 0;
};

// The column tiles per mixing row launch_hc_post_mix writes (the mix_tiles argument of
// launch_hc_pre_partials), or an error naming what is wrong with the launch.
Result<int> hc_post_mix_tiles(const HcPostMixLaunch& launch);

Status launch_hc_post_mix(const HcPostMixLaunch& launch, cudaStream_t stream);

}  // namespace ds4
