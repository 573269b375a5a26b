#include "cpu/forward_pass.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/attention.h"
#include "cpu/compressor.h"
#include "cpu/hyper_connections.h"
#include "cpu/indexer.h"
#include "cpu/matmul.h"
#include "cpu/moe.h"
#include "cpu/qat.h"
#include "cpu/vector_ops.h"
#include "format/quant.h"

namespace ds4::cpu {
namespace {

using Vec = std::vector<float>;

// Where each batch token sits: its slice and its index inside the slice.
struct TokenPlace {
  int32_t slice = 0;
  int32_t index = 0;
};

class BlockRunner {
 public:
  BlockRunner(const ForwardContext& ctx, std::span<const BatchToken> batch, std::vector<SequenceSlice>& slices)
      : ctx_(ctx), c_(ctx.model.config()), batch_(batch), slices_(slices), n_(static_cast<int64_t>(batch.size())) {
    places_.resize(n_);
    for (size_t s = 0; s < slices_.size(); ++s) {
      for (size_t i = 0; i < slices_[s].tokens.size(); ++i) {
        places_[slices_[s].tokens[i]] = {static_cast<int32_t>(s), static_cast<int32_t>(i)};
      }
    }
  }

  // §2.2: four identical copies of the embedding row.
  void embed(Vec& x) const {
    const Weight& emb = ctx_.model.token_embd();
    const int64_t d = c_.dim;
    x.assign(n_ * c_.hc_dim(), 0.0f);
    for (int64_t t = 0; t < n_; ++t) {
      float* xt = x.data() + t * c_.hc_dim();
      const float* dense = ctx_.cache.find(emb.tensor);
      if (dense != nullptr) {
        std::memcpy(xt, dense + static_cast<int64_t>(batch_[t].token) * d, d * sizeof(float));
      } else {
        dequantize_row(emb.type(), emb.row(batch_[t].token), xt, d);
      }
      for (int h = 1; h < c_.hc_mult; ++h) std::memcpy(xt + h * d, xt, d * sizeof(float));
    }
  }

  // §2.4: one block (attention half then FFN half), updating x in place.
  void block(int32_t layer, const LayerWeights& w, Vec& x) {
    attention_half(layer, w, x);
    ffn_half(layer, w, x);
    if (ctx_.trace != nullptr && ctx_.trace->block_output) {
      for (int64_t t = 0; t < n_; ++t) ctx_.trace->block_output(layer, batch_[t], x.data() + t * c_.hc_dim());
    }
  }

  // §2.11: the MTP block's input: e_proj(enorm(embedding)) broadcast to the streams
  // plus h_proj(hnorm(stream)) of the given HC state, per stream.
  void mtp_embed(const MtpWeights& w, const std::vector<const float*>& hidden, Vec& x) const {
    const int64_t d = c_.dim, hc = c_.hc_mult;
    Vec e;
    embed(e);  // n x hc x d; stream 0 holds the embedding row
    Vec en(n_ * d), hn(n_ * hc * d);
    for (int64_t t = 0; t < n_; ++t) {
      rms_norm(e.data() + t * hc * d, w.enorm.f32(), d, c_.norm_eps, en.data() + t * d);
      for (int64_t h = 0; h < hc; ++h) {
        rms_norm(hidden[t] + h * d, w.hnorm.f32(), d, c_.norm_eps, hn.data() + (t * hc + h) * d);
      }
    }
    Vec ep(n_ * d), hp(n_ * hc * d);
    mm(w.e_proj, en.data(), n_, ep.data());
    mm(w.h_proj, hn.data(), n_ * hc, hp.data());
    x.assign(n_ * hc * d, 0.0f);
    for (int64_t t = 0; t < n_; ++t) {
      for (int64_t h = 0; h < hc; ++h) {
        for (int64_t i = 0; i < d; ++i) x[(t * hc + h) * d + i] = ep[t * d + i] + hp[(t * hc + h) * d + i];
      }
    }
  }

  // §2.7: logits for the tokens that want them; hidden states for those that want them.
  void head(const Vec& x, ForwardOutput* out) const {
    const Model& m = ctx_.model;
    head(x, m.output_hc_fn(), m.output_hc_scale(), m.output_hc_base(), m.output_norm(), out);
  }

  void head(const Vec& x, const Weight& hc_fn, const Weight& hc_scale, const Weight& hc_base, const Weight& norm,
            ForwardOutput* out) const {
    const int64_t hcd = c_.hc_dim(), d = c_.dim;
    std::vector<int64_t> want;
    for (int64_t t = 0; t < n_; ++t) {
      if (batch_[t].want_hidden) out->hidden.insert(out->hidden.end(), x.begin() + t * hcd, x.begin() + (t + 1) * hcd);
      if (batch_[t].want_logits) want.push_back(t);
    }
    if (want.empty()) return;
    const Model& m = ctx_.model;
    Vec y(want.size() * d);
    ctx_.pool.parallel_for(static_cast<int64_t>(want.size()), 1, [&](int64_t b, int64_t e) {
      Vec row(hcd);
      for (int64_t i = b; i < e; ++i) {
        float* yi = y.data() + i * d;
        hc_head(c_, x.data() + want[i] * hcd, hc_fn, dense(hc_fn), hc_scale, hc_base, yi, row.data());
        rms_norm(yi, norm.f32(), d, c_.norm_eps, yi);
      }
    });
    const size_t base = out->logits.size();
    out->logits.resize(base + want.size() * c_.vocab);
    mm(m.output(), y.data(), static_cast<int64_t>(want.size()), out->logits.data() + base);
  }

 private:
  const float* dense(const Weight& w) const { return ctx_.cache.find(w.tensor); }
  void mm(const Weight& w, MatmulArgs a) const {
    a.dense = dense(w);
    matmul(ctx_.pool, w, a);
  }
  void mm(const Weight& w, const float* x, int64_t n, float* y) const {
    matmul(ctx_.pool, w, x, n, y, dense(w));
  }

  const Rope& rope_for(const LayerWeights& w) const { return w.ratio != 0 ? ctx_.rope_yarn : ctx_.rope_plain; }
  LayerState& state(int64_t t, int32_t layer) const {
    return slices_[places_[t].slice].state->layers[layer];
  }
  int32_t pos(int64_t t) const { return batch_[t].pos; }

  // hc_pre + RMSNorm for every token: writes the normalised sublayer input.
  void hc_pre_all(const Vec& x, const Weight& fn, const Weight& scale, const Weight& base, const Weight& norm,
                  Vec& normed, std::vector<HcMix>& mix) const {
    const int64_t hcd = c_.hc_dim(), d = c_.dim;
    normed.assign(n_ * d, 0.0f);
    mix.resize(n_);
    ctx_.pool.parallel_for(n_, 1, [&](int64_t b, int64_t e) {
      Vec row(hcd);
      for (int64_t t = b; t < e; ++t) {
        float* y = normed.data() + t * d;
        hc_pre(c_, x.data() + t * hcd, fn, dense(fn), scale, base, y, &mix[t], row.data());
        rms_norm(y, norm.f32(), d, c_.norm_eps, y);
      }
    });
  }

  void hc_post_all(const Vec& f, const Vec& residual, const std::vector<HcMix>& mix, Vec& x) const {
    const int64_t hcd = c_.hc_dim(), d = c_.dim;
    ctx_.pool.parallel_for(n_, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) hc_post(c_, f.data() + t * d, residual.data() + t * hcd, mix[t], x.data() + t * hcd);
    });
  }

  // Applies `fn(t)` to every token on the pool.
  template <typename Fn>
  void for_tokens(Fn fn) const {
    ctx_.pool.parallel_for(n_, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) fn(t);
    });
  }

  // ---- attention half (§2.5) ----
  void attention_half(int32_t layer, const LayerWeights& w, Vec& x) {
    const int64_t d = c_.dim, hd = c_.head_dim, H = c_.n_heads, ql = c_.q_lora;
    const int64_t nope = c_.nope_dim();
    const Rope& rope = rope_for(w);
    Vec residual = x;
    Vec nrm;
    std::vector<HcMix> mix;
    hc_pre_all(x, w.hc_attn_fn, w.hc_attn_scale, w.hc_attn_base, w.attn_norm, nrm, mix);

    // §2.5.1 query path.
    Vec qlat(n_ * ql);
    mm(w.attn_q_a, nrm.data(), n_, qlat.data());
    for (int64_t t = 0; t < n_; ++t) rms_norm(qlat.data() + t * ql, w.attn_q_a_norm.f32(), ql, c_.norm_eps, qlat.data() + t * ql);
    Vec q(n_ * H * hd);
    mm(w.attn_q_b, qlat.data(), n_, q.data());
    for_tokens([&](int64_t t) {
      for (int64_t h = 0; h < H; ++h) {
        float* qh = q.data() + (t * H + h) * hd;
        rms_norm(qh, nullptr, hd, c_.norm_eps, qh);
        rope.rotate(qh + nope, pos(t));
      }
    });

    // §2.5.2 KV path.
    Vec kv(n_ * hd);
    mm(w.attn_kv, nrm.data(), n_, kv.data());
    for_tokens([&](int64_t t) {
      float* r = kv.data() + t * hd;
      rms_norm(r, w.attn_kv_a_norm.f32(), hd, c_.norm_eps, r);
      rope.rotate(r + nope, pos(t));
      if (ctx_.qat) fp8_roundtrip(r, nope);
    });

    // §2.5.3 compressors and §2.5.4 indexer.
    std::vector<std::vector<int32_t>> selected(n_);
    std::vector<uint8_t> use_selection(n_, 0);
    if (w.ratio != 0) {
      compress(layer, w.compressor, nrm, rope, CompressedRowKind::kAttention);
      if (w.ratio == 4) {
        compress(layer, w.indexer.compressor, nrm, rope, CompressedRowKind::kIndexer);
        run_indexer(layer, w, nrm, qlat, rope, selected, use_selection);
      }
    }

    // §2.5.5 attention over raw window + compressed rows, per (token, head).
    std::vector<std::vector<const float*>> rows(n_);
    for_tokens([&](int64_t t) { visible_rows(layer, w, t, kv, selected[t], use_selection[t] != 0, rows[t]); });
    Vec o(n_ * H * hd);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    const float* sinks = w.attn_sinks.f32();
    int64_t work = 0;  // multiply-adds, to keep tiny decode steps off the pool
    for (const auto& r : rows) work += static_cast<int64_t>(r.size()) * H * hd * 2;
    const int64_t grain = work < (1 << 18) ? n_ * H : 1;
    ctx_.pool.parallel_for(n_ * H, grain, [&](int64_t b, int64_t e) {
      Vec scores;
      for (int64_t th = b; th < e; ++th) {
        const int64_t t = th / H, h = th % H;
        scores.resize(rows[t].size());
        float* oh = o.data() + th * hd;
        attend_head(q.data() + th * hd, rows[t].data(), static_cast<int64_t>(rows[t].size()), hd, sinks[h], scale, oh,
                    scores.data());
        rope.rotate(oh + nope, pos(t), /*inverse=*/true);
      }
    });

    // §2.5.6 grouped low-rank output projection.
    const int64_t G = c_.out_groups, ol = c_.out_lora, gw = c_.heads_per_group() * hd;
    Vec u(n_ * G * ol);
    for (int64_t g = 0; g < G; ++g) {
      MatmulArgs a;
      a.x = o.data() + g * gw;
      a.n = n_;
      a.ldx = H * hd;
      a.y = u.data() + g * ol;
      a.ldy = G * ol;
      a.row_begin = g * ol;
      a.row_count = ol;
      mm(w.attn_output_a, a);
    }
    Vec attn(n_ * d);
    mm(w.attn_output_b, u.data(), n_, attn.data());

    // The chunk's raw rows join the ring only now: queries above read them from `kv`.
    // They stay f32 as in the official code (ds4 rounds them to f16).
    for (int64_t t = 0; t < n_; ++t) state(t, layer).write_raw(pos(t), kv.data() + t * hd);

    hc_post_all(attn, residual, mix, x);
  }

  // Rows visible to token t: raw window (from this batch or the ring), then the
  // compressed rows (all visible ones, or the indexer's selection).
  void visible_rows(int32_t layer, const LayerWeights& w, int64_t t, const Vec& kv, const std::vector<int32_t>& sel,
                    bool use_sel, std::vector<const float*>& rows) const {
    rows.clear();
    const TokenPlace place = places_[t];
    const SequenceSlice& slice = slices_[place.slice];
    const LayerState& st = slice.state->layers[layer];
    const int64_t hd = c_.head_dim;
    const int64_t p = pos(t);
    for (int64_t r = std::max<int64_t>(0, p - c_.window + 1); r <= p; ++r) {
      if (r >= slice.start) {
        rows.push_back(kv.data() + static_cast<int64_t>(slice.tokens[r - slice.start]) * hd);
      } else if (st.raw_holds(r)) {
        rows.push_back(st.raw_at(r));
      }
    }
    if (w.ratio == 0) return;
    // Rows stay in f32: the official code attends the unrounded rows (ds4 stores f16).
    const int64_t visible = (p + 1) / w.ratio;
    if (use_sel) {
      for (int32_t ci : sel) rows.push_back(st.comp_rows.row(ci));
    } else {
      for (int64_t ci = 0; ci < visible; ++ci) rows.push_back(st.comp_rows.row(ci));
    }
  }

  // Projects every token through one compressor, then per sequence stores the
  // tokens in order and emits the rows of the windows they close.
  void compress(int32_t layer, const CompressorWeights& cw, const Vec& nrm, const Rope& rope, CompressedRowKind kind) {
    const int64_t width = cw.kv.rows();
    Vec k(n_ * width), z(n_ * width);
    mm(cw.kv, nrm.data(), n_, k.data());
    mm(cw.gate, nrm.data(), n_, z.data());
    for (SequenceSlice& slice : slices_) {
      LayerState& st = slice.state->layers[layer];
      CompressorRing& ring = kind == CompressedRowKind::kAttention ? st.comp : st.index_comp;
      RowStore& store = kind == CompressedRowKind::kAttention ? st.comp_rows : st.index_rows;
      for (int32_t t : slice.tokens) {
        const int64_t p = pos(t);
        compressor_store(cw, ring, p, k.data() + t * width, z.data() + t * width);
        if ((p + 1) % ring.ratio == 0) {
          compressor_emit(c_, cw, ring, p, rope, kind, ctx_.qat, store.row_for_write((p + 1) / ring.ratio - 1));
        }
      }
    }
  }

  // §2.5.4: for tokens with more than top_k visible rows, choose top_k of them.
  void run_indexer(int32_t layer, const LayerWeights& w, const Vec& nrm, const Vec& qlat, const Rope& rope,
                   std::vector<std::vector<int32_t>>& selected, std::vector<uint8_t>& use_selection) {
    std::vector<int64_t> need;
    for (int64_t t = 0; t < n_; ++t) {
      if ((pos(t) + 1) / 4 > c_.index_topk) need.push_back(t);
    }
    if (need.empty()) return;
    const int64_t m = static_cast<int64_t>(need.size());
    const int64_t ih = c_.index_heads, id = c_.index_head_dim, d = c_.dim, ql = c_.q_lora;
    const int64_t nope = id - c_.rope_dim;
    Vec lat(m * ql), xin(m * d);
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(lat.data() + i * ql, qlat.data() + need[i] * ql, ql * sizeof(float));
      std::memcpy(xin.data() + i * d, nrm.data() + need[i] * d, d * sizeof(float));
    }
    Vec q(m * ih * id), wts(m * ih);
    mm(w.indexer.q_b, lat.data(), m, q.data());
    mm(w.indexer.proj, xin.data(), m, wts.data());
    const float wscale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(id)) *
                                            (1.0 / std::sqrt(static_cast<double>(ih))));
    // RoPE + Hadamard + FP4 on each query head, scaled head weights.
    auto prepare = [&](int64_t i) {
      float* qi = q.data() + i * ih * id;
      for (int64_t h = 0; h < ih; ++h) {
        float* qh = qi + h * id;
        rope.rotate(qh + nope, pos(need[i]));
        if (ctx_.qat) {
          hadamard(qh, id);
          fp4_roundtrip(qh, id);
        }
      }
      for (int64_t h = 0; h < ih; ++h) wts[i * ih + h] *= wscale;
    };
    // Scores rows [c0, c1) of query i.
    auto score = [&](int64_t i, int64_t c0, int64_t c1, float* scores) {
      const LayerState& st = state(need[i], layer);
      indexer_scores(q.data() + i * ih * id, wts.data() + i * ih, static_cast<int>(ih), static_cast<int>(id),
                     st.index_rows.row(c0), c1 - c0, scores + c0);
    };
    auto visible = [&](int64_t i) { return static_cast<int64_t>((pos(need[i]) + 1) / 4); };
    if (m >= ctx_.pool.size()) {
      // Many queries (prefill): one query per task.
      ctx_.pool.parallel_for(m, 1, [&](int64_t b, int64_t e) {
        Vec scores;
        for (int64_t i = b; i < e; ++i) {
          prepare(i);
          scores.resize(visible(i));
          score(i, 0, visible(i), scores.data());
          select_top_k(scores.data(), visible(i), c_.index_topk, &selected[need[i]]);
        }
      });
    } else {
      // Few queries (decode): split each query's rows across the pool.
      Vec scores;
      for (int64_t i = 0; i < m; ++i) {
        prepare(i);
        const int64_t nc = visible(i);
        scores.resize(nc);
        const int64_t grain = std::max<int64_t>(256, nc / (4 * ctx_.pool.size()));
        ctx_.pool.parallel_for(nc, grain, [&](int64_t c0, int64_t c1) { score(i, c0, c1, scores.data()); });
        select_top_k(scores.data(), nc, c_.index_topk, &selected[need[i]]);
      }
    }
    for (int64_t t : need) use_selection[t] = 1;
    if (ctx_.trace != nullptr && ctx_.trace->indexer) {
      for (int64_t t : need) ctx_.trace->indexer(layer, batch_[t], selected[t]);
    }
  }

  // ---- FFN half (§2.6) ----
  void ffn_half(int32_t layer, const LayerWeights& w, Vec& x) {
    const int64_t d = c_.dim, ne = c_.n_experts, k = c_.n_experts_used;
    Vec residual = x;
    Vec f;
    std::vector<HcMix> mix;
    hc_pre_all(x, w.hc_ffn_fn, w.hc_ffn_scale, w.hc_ffn_base, w.ffn_norm, f, mix);

    Vec logits(n_ * ne);
    mm(w.ffn_gate_inp, f.data(), n_, logits.data());
    std::vector<int32_t> experts(n_ * k);
    Vec weights(n_ * k);
    for (int64_t t = 0; t < n_; ++t) {
      route_token(c_, w, logits.data() + t * ne, batch_[t].token, experts.data() + t * k, weights.data() + t * k);
      if (ctx_.trace != nullptr && ctx_.trace->routing) {
        ctx_.trace->routing(layer, batch_[t], experts.data() + t * k, weights.data() + t * k);
      }
    }

    Vec out(n_ * d, 0.0f);
    // Routed experts in expert-index order, each over the tokens routed to it.
    for (int64_t e = 0; e < ne; ++e) {
      std::vector<int64_t> toks;
      Vec rw;
      for (int64_t t = 0; t < n_; ++t) {
        for (int64_t i = 0; i < k; ++i) {
          if (experts[t * k + i] == e) {
            toks.push_back(t);
            rw.push_back(weights[t * k + i]);
          }
        }
      }
      if (toks.empty()) continue;
      const int64_t m = static_cast<int64_t>(toks.size());
      Vec xe(m * d);
      for (int64_t i = 0; i < m; ++i) std::memcpy(xe.data() + i * d, f.data() + toks[i] * d, d * sizeof(float));
      Vec ye(m * d);
      expert_ffn(w.ffn_gate_exps, w.ffn_up_exps, w.ffn_down_exps, e, w.swiglu_limit, xe, m, rw.data(), ye);
      for (int64_t i = 0; i < m; ++i) {
        float* dst = out.data() + toks[i] * d;
        const float* src = ye.data() + i * d;
        for (int64_t j = 0; j < d; ++j) dst[j] += src[j];
      }
    }
    if (w.ffn_gate_shexp.present()) {
      Vec ys(n_ * d);
      expert_ffn(w.ffn_gate_shexp, w.ffn_up_shexp, w.ffn_down_shexp, 0, w.swiglu_limit, f, n_, nullptr, ys);
      for (int64_t i = 0; i < n_ * d; ++i) out[i] += ys[i];
    }
    hc_post_all(out, residual, mix, x);
  }

  // y = down . (clamped_swiglu(gate . x, up . x) * route_weight) for m tokens.
  void expert_ffn(const Weight& gate, const Weight& up, const Weight& down, int64_t mat, float limit, const Vec& xin,
                  int64_t m, const float* route_weight, Vec& y) const {
    const int64_t d = c_.dim, ffn = gate.rows();
    Vec g(m * ffn), u(m * ffn);
    MatmulArgs a;
    a.x = xin.data();
    a.n = m;
    a.ldx = d;
    a.ldy = ffn;
    a.mat = mat;
    a.y = g.data();
    mm(gate, a);
    a.y = u.data();
    mm(up, a);
    for (int64_t i = 0; i < m; ++i) {
      float* gi = g.data() + i * ffn;
      clamped_swiglu(gi, u.data() + i * ffn, ffn, limit, gi);
      if (route_weight != nullptr) {
        for (int64_t j = 0; j < ffn; ++j) gi[j] *= route_weight[i];
      }
    }
    MatmulArgs b;
    b.x = g.data();
    b.n = m;
    b.ldx = ffn;
    b.y = y.data();
    b.ldy = d;
    b.mat = mat;
    mm(down, b);
  }

  const ForwardContext& ctx_;
  const ModelConfig& c_;
  std::span<const BatchToken> batch_;
  std::vector<SequenceSlice>& slices_;
  int64_t n_;
  std::vector<TokenPlace> places_;
};

}  // namespace

void run_forward(const ForwardContext& ctx, std::span<const BatchToken> batch, std::vector<SequenceSlice>& slices,
                 ForwardOutput* out) {
  BlockRunner runner(ctx, batch, slices);
  std::vector<float> x;
  runner.embed(x);
  const Model& m = ctx.model;
  for (int32_t l = 0; l < m.n_layers(); ++l) runner.block(l, m.layer(l), x);
  runner.head(x, out);
}

void run_mtp(const ForwardContext& ctx, std::span<const BatchToken> batch, const std::vector<const float*>& hidden,
             std::vector<SequenceSlice>& slices, ForwardOutput* out) {
  BlockRunner runner(ctx, batch, slices);
  const MtpWeights& w = ctx.model.mtp();
  std::vector<float> x;
  runner.mtp_embed(w, hidden, x);
  runner.block(ctx.model.n_layers(), w.block, x);
  runner.head(x, w.hc_head_fn, w.hc_head_scale, w.hc_head_base, w.norm, out);
}

}  // namespace ds4::cpu
