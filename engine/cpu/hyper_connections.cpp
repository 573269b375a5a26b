#include "cpu/hyper_connections.h"

#include <algorithm>
#include <cmath>

#include "cpu/vector_ops.h"
#include "format/quant.h"

namespace ds4::cpu {
namespace {

// m[r] = (fn_r . x) * rsqrt(mean(x^2) + eps) for the rows of `fn` (official order:
// project the raw state, then scale by the RMS factor).
void hc_mixes(const ModelConfig& c, const float* x, const Weight& fn, const float* dense, float* m, float* row) {
  const int64_t n = c.hc_dim();
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float rsqrt = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + c.norm_eps));
  for (int64_t r = 0; r < fn.rows(); ++r) {
    const float* w = row;
    if (dense != nullptr) {
      w = dense + r * n;
    } else if (fn.type() == GgmlType::F32) {
      w = reinterpret_cast<const float*>(fn.row(r));
    } else {
      dequantize_row(fn.type(), fn.row(r), row, n);
    }
    m[r] = dot(w, x, n) * rsqrt;
  }
}

}  // namespace

void hc_split_sinkhorn(const float* mixes, const float* scale, const float* base, int hc, int iters,
                       float eps, HcMix* out) {
  for (int h = 0; h < hc; ++h) {
    out->pre[h] = sigmoid(mixes[h] * scale[0] + base[h]) + eps;
    out->post[h] = 2.0f * sigmoid(mixes[hc + h] * scale[1] + base[hc + h]);
  }
  float* cm = out->comb;
  // Softmax over destinations for each source row, plus eps.
  for (int i = 0; i < hc; ++i) {
    float mx = -INFINITY;
    for (int k = 0; k < hc; ++k) {
      cm[i * hc + k] = mixes[2 * hc + i * hc + k] * scale[2] + base[2 * hc + i * hc + k];
      mx = std::max(mx, cm[i * hc + k]);
    }
    float sum = 0;
    for (int k = 0; k < hc; ++k) {
      cm[i * hc + k] = std::exp(cm[i * hc + k] - mx);
      sum += cm[i * hc + k];
    }
    for (int k = 0; k < hc; ++k) cm[i * hc + k] = cm[i * hc + k] / sum + eps;
  }
  auto normalize_columns = [&] {
    for (int k = 0; k < hc; ++k) {
      float sum = 0;
      for (int i = 0; i < hc; ++i) sum += cm[i * hc + k];
      for (int i = 0; i < hc; ++i) cm[i * hc + k] /= (sum + eps);
    }
  };
  auto normalize_rows = [&] {
    for (int i = 0; i < hc; ++i) {
      float sum = 0;
      for (int k = 0; k < hc; ++k) sum += cm[i * hc + k];
      for (int k = 0; k < hc; ++k) cm[i * hc + k] /= (sum + eps);
    }
  };
  normalize_columns();
  for (int it = 1; it < iters; ++it) {
    normalize_rows();
    normalize_columns();
  }
}

void hc_pre(const ModelConfig& c, const float* x, const Weight& fn, const float* fn_dense, const Weight& scale,
            const Weight& base, float* y, HcMix* mix, float* row) {
  float m[16 * 18];
  hc_mixes(c, x, fn, fn_dense, m, row);
  hc_split_sinkhorn(m, scale.f32(), base.f32(), c.hc_mult, c.hc_sinkhorn_iters, c.hc_eps, mix);
  const int64_t d = c.dim;
  for (int64_t i = 0; i < d; ++i) {
    float acc = 0;
    for (int h = 0; h < c.hc_mult; ++h) acc += mix->pre[h] * x[h * d + i];
    y[i] = acc;
  }
}

void hc_post(const ModelConfig& c, const float* f, const float* residual, const HcMix& mix, float* x_out) {
  const int hc = c.hc_mult;
  const int64_t d = c.dim;
  for (int k = 0; k < hc; ++k) {
    float* out = x_out + k * d;
    for (int64_t i = 0; i < d; ++i) {
      float acc = mix.post[k] * f[i];
      for (int s = 0; s < hc; ++s) acc += mix.comb[s * hc + k] * residual[s * d + i];
      out[i] = acc;
    }
  }
}

void hc_head(const ModelConfig& c, const float* x, const Weight& fn, const float* fn_dense, const Weight& scale,
             const Weight& base, float* y, float* row) {
  float m[16];
  hc_mixes(c, x, fn, fn_dense, m, row);
  const float* sc = scale.f32();
  const float* b = base.f32();
  float w[16];
  for (int h = 0; h < c.hc_mult; ++h) w[h] = sigmoid(m[h] * sc[0] + b[h]) + c.hc_eps;
  const int64_t d = c.dim;
  for (int64_t i = 0; i < d; ++i) {
    float acc = 0;
    for (int h = 0; h < c.hc_mult; ++h) acc += w[h] * x[h * d + i];
    y[i] = acc;
  }
}

}  // namespace ds4::cpu
