// Manifold-constrained hyper-connections (spec/MODEL.md §2.3): the residual stream of
// a token is hc_mult streams of dim values (stream-major). Each sublayer reads a
// weighted sum of the streams (hc_pre, with a Sinkhorn-normalised mixing matrix) and
// writes back through hc_post; hc_head collapses the streams before the final norm.
//
// Thread-safety: pure functions over caller memory.
#pragma once

#include <cstdint>

#include "model/model.h"

namespace ds4::cpu {

// Control values of one sublayer for one token.
struct HcMix {
  float pre[16];       // hc_mult weights of the streams for the sublayer input
  float post[16];      // hc_mult weights of the sublayer output per destination stream
  float comb[16 * 16]; // comb[src * hc + dst]
};

// mixes (hc_mix values) -> pre / post / Sinkhorn-normalised comb.
void hc_split_sinkhorn(const float* mixes, const float* scale, const float* base, int hc,
                       int iters, float eps, HcMix* out);

// X: hc * dim state of one token. Writes the sublayer input y (dim) and the mix.
// `fn_dense` is an f32 copy of fn (or nullptr); otherwise `fn_row_scratch` (hc * dim
// floats) receives each dequantized row.
void hc_pre(const ModelConfig& c, const float* x, const Weight& fn, const float* fn_dense, const Weight& scale,
            const Weight& base, float* y, HcMix* mix, float* fn_row_scratch);

// X'_dst = post_dst * f + sum_src comb[src][dst] * residual_src (one token).
void hc_post(const ModelConfig& c, const float* f, const float* residual, const HcMix& mix,
             float* x_out);

// Final collapse: y = sum_h (sigmoid(m_h * scale + base_h) + eps) * X_h.
void hc_head(const ModelConfig& c, const float* x, const Weight& fn, const float* fn_dense, const Weight& scale,
             const Weight& base, float* y, float* fn_row_scratch);

}  // namespace ds4::cpu
