// Manifold-constrained hyper-connections on the GPU (spec/MODEL.md §2.2, §2.3, §2.7):
// embedding into the HC streams, the hc_pre tail (RMS factor, pre/post/comb split,
// Sinkhorn, weighted stream sum, sublayer RMSNorm), hc_post, and the final hc_head.
// The 24 (or 4) mixing projections fn . X come from launch_matvec beforehand.
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "format/ggml_type.h"

namespace ds4 {

struct HcShape {
  int dim = 0;        // E
  int mult = 0;       // number of streams
  int sinkhorn_iters = 0;
  float hc_eps = 1e-6f;
  float norm_eps = 1e-6f;
};

// X[h*dim + d] = embedding row (*token) for every stream h. `embd` is F16 or F32.
Status launch_hc_embed(const void* embd, GgmlType type, const int32_t* token, const HcShape& s,
                       float* x, cudaStream_t stream);

// Given mix_raw = fn . X (hc_mix values), writes post (mult), comb (mult x mult, [src][dst])
// and out = rmsw(sum_h pre_h X_h, norm_weight) (dim values).
Status launch_hc_pre(const float* x, const float* mix_raw, const float* scale, const float* base,
                     const float* norm_weight, const HcShape& s, float* post, float* comb,
                     float* out, cudaStream_t stream);

// launch_hc_pre with the mixing projections still split in column tiles: mix value i is
// the sum over k < mix_tiles of mix_partial[i * mix_tiles + k], added in the order of
// the matvec's own tile reduction (the same bits as launch_matvec then launch_hc_pre).
// mix_partial: the split_workspace of a launch_matvec with tile_partials_only set;
// mix_tiles: matvec_tile_columns() of that launch. Saves the reduction launch.
Status launch_hc_pre_partials(const float* x, const float* mix_partial, int mix_tiles, const float* scale,
                              const float* base, const float* norm_weight, const HcShape& s, float* post,
                              float* comb, float* out, cudaStream_t stream);

// x_out[k] = post_k * f + sum_i comb[i][k] * x_in[i].
Status launch_hc_post(const float* x_in, const float* f, const float* post, const float* comb,
                      const HcShape& s, float* x_out, cudaStream_t stream);

// Given mix_raw = fn . X (mult values): out = rmsw(sum_h w_h X_h, norm_weight).
Status launch_hc_head(const float* x, const float* mix_raw, const float* scale, const float* base,
                      const float* norm_weight, const HcShape& s, float* out, cudaStream_t stream);

// launch_hc_head from split partial sums, as launch_hc_pre_partials.
Status launch_hc_head_partials(const float* x, const float* mix_partial, int mix_tiles, const float* scale,
                               const float* base, const float* norm_weight, const HcShape& s, float* out,
                               cudaStream_t stream);

}  // namespace ds4
