#include "model/model.h"

#include <string>
#include <utility>

#include "format/quant.h"

namespace ds4 {
namespace {

std::string shape_string(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

std::string types_string(const std::vector<GgmlType>& types) {
  std::string s;
  for (GgmlType t : types) s += (s.empty() ? "" : " or ") + std::string(ggml_type_name(t));
  return s;
}

// Binds named tensors of one file, checking exact type and shape (GGUF.md §7).
class Binder {
 public:
  explicit Binder(const GgufFile& gguf) : gguf_(gguf) {}

  Status bind(Weight* w, const std::string& name, const std::vector<GgmlType>& types,
              std::vector<int64_t> ne, bool optional = false) const {
    const GgufTensor* t = gguf_.tensor(name);
    if (t == nullptr) {
      if (optional) return Status::Ok();
      return Status::Error("missing tensor " + name + " (expected " + types_string(types) + " " +
                           shape_string(ne) + ")");
    }
    bool type_ok = false;
    for (GgmlType ty : types) type_ok |= (t->type == ty);
    if (!type_ok) {
      return Status::Error("tensor " + name + " has type " + std::string(ggml_type_name(t->type)) +
                           ", expected " + types_string(types));
    }
    if (t->ne != ne) {
      return Status::Error("tensor " + name + " has shape " + shape_string(t->ne) + ", expected " +
                           shape_string(ne));
    }
    if (t->type != GgmlType::I32 && !quant_supported(t->type)) {
      return Status::Error("tensor " + name + ": type " + std::string(ggml_type_name(t->type)) +
                           " has no dequantize/dot routines");
    }
    w->tensor = t;
    return Status::Ok();
  }

 private:
  const GgufFile& gguf_;
};

constexpr auto F16 = GgmlType::F16;
constexpr auto F32 = GgmlType::F32;
constexpr auto Q8 = GgmlType::Q8_0;
constexpr auto I32 = GgmlType::I32;

struct BlockSpec {
  std::string prefix;       // "blk.3." or "mtp.0."
  int32_t ratio = 0;
  bool hash = false;
  bool mtp = false;         // MTP relaxations: F16 or F32 control tensors, bias required
};

Status bind_compressor(const Binder& b, const std::string& prefix, const ModelConfig& c, int32_t ratio,
                       int32_t d, CompressorWeights* w) {
  const int64_t width = static_cast<int64_t>(ModelConfig::compressor_coff(ratio)) * d;
  DS4_RETURN_IF_ERROR(b.bind(&w->ape, prefix + "compressor_ape.weight", {F16, F32}, {width, ratio}));
  DS4_RETURN_IF_ERROR(b.bind(&w->kv, prefix + "compressor_kv.weight", {F16, F32}, {c.dim, width}));
  DS4_RETURN_IF_ERROR(b.bind(&w->gate, prefix + "compressor_gate.weight", {F16, F32}, {c.dim, width}));
  DS4_RETURN_IF_ERROR(b.bind(&w->norm, prefix + "compressor_norm.weight", {F32}, {d}));
  return Status::Ok();
}

Status bind_block(const Binder& b, const ModelConfig& c, const BlockSpec& s, float swiglu_limit,
                  LayerWeights* w) {
  const std::string& p = s.prefix;
  const int64_t dim = c.dim, hd = c.head_dim, hc = c.hc_dim(), mix = c.hc_mix();
  w->ratio = s.ratio;
  w->hash = s.hash;
  w->swiglu_limit = swiglu_limit;
  const std::vector<GgmlType> ctl = s.mtp ? std::vector<GgmlType>{F16, F32} : std::vector<GgmlType>{F16};

  DS4_RETURN_IF_ERROR(b.bind(&w->hc_attn_fn, p + "hc_attn_fn.weight", ctl, {hc, mix}));
  DS4_RETURN_IF_ERROR(b.bind(&w->hc_attn_scale, p + "hc_attn_scale.weight", {F32}, {3}));
  DS4_RETURN_IF_ERROR(b.bind(&w->hc_attn_base, p + "hc_attn_base.weight", {F32}, {mix}));
  DS4_RETURN_IF_ERROR(b.bind(&w->hc_ffn_fn, p + "hc_ffn_fn.weight", ctl, {hc, mix}));
  DS4_RETURN_IF_ERROR(b.bind(&w->hc_ffn_scale, p + "hc_ffn_scale.weight", {F32}, {3}));
  DS4_RETURN_IF_ERROR(b.bind(&w->hc_ffn_base, p + "hc_ffn_base.weight", {F32}, {mix}));

  DS4_RETURN_IF_ERROR(b.bind(&w->attn_norm, p + "attn_norm.weight", {F32}, {dim}));
  DS4_RETURN_IF_ERROR(b.bind(&w->attn_q_a, p + "attn_q_a.weight", {Q8}, {dim, c.q_lora}));
  DS4_RETURN_IF_ERROR(b.bind(&w->attn_q_a_norm, p + "attn_q_a_norm.weight", {F32}, {c.q_lora}));
  DS4_RETURN_IF_ERROR(b.bind(&w->attn_q_b, p + "attn_q_b.weight", {Q8}, {c.q_lora, c.n_heads * hd}));
  DS4_RETURN_IF_ERROR(b.bind(&w->attn_kv, p + "attn_kv.weight", {Q8}, {dim, hd}));
  DS4_RETURN_IF_ERROR(b.bind(&w->attn_kv_a_norm, p + "attn_kv_a_norm.weight", {F32}, {hd}));
  DS4_RETURN_IF_ERROR(b.bind(&w->attn_sinks, p + "attn_sinks.weight", {F32}, {c.n_heads}));
  DS4_RETURN_IF_ERROR(b.bind(&w->attn_output_a, p + "attn_output_a.weight", {Q8},
                             {c.heads_per_group() * hd, static_cast<int64_t>(c.out_groups) * c.out_lora}));
  DS4_RETURN_IF_ERROR(b.bind(&w->attn_output_b, p + "attn_output_b.weight", {Q8},
                             {static_cast<int64_t>(c.out_groups) * c.out_lora, dim}));

  if (s.ratio != 0) {
    DS4_RETURN_IF_ERROR(bind_compressor(b, p + "attn_", c, s.ratio, c.head_dim, &w->compressor));
  }
  if (s.ratio == 4) {
    IndexerWeights& ix = w->indexer;
    DS4_RETURN_IF_ERROR(b.bind(&ix.q_b, p + "indexer.attn_q_b.weight", {F16, F32},
                               {c.q_lora, static_cast<int64_t>(c.index_heads) * c.index_head_dim}));
    DS4_RETURN_IF_ERROR(b.bind(&ix.proj, p + "indexer.proj.weight", {F16, F32}, {dim, c.index_heads}));
    DS4_RETURN_IF_ERROR(bind_compressor(b, p + "indexer_", c, 4, c.index_head_dim, &ix.compressor));
  }

  DS4_RETURN_IF_ERROR(b.bind(&w->ffn_norm, p + "ffn_norm.weight", {F32}, {dim}));
  DS4_RETURN_IF_ERROR(b.bind(&w->ffn_gate_inp, p + "ffn_gate_inp.weight", ctl, {dim, c.n_experts}));
  DS4_RETURN_IF_ERROR(b.bind(&w->exp_probs_b, p + "exp_probs_b.bias", {F32}, {c.n_experts},
                             /*optional=*/!s.mtp));
  if (s.hash) {
    DS4_RETURN_IF_ERROR(b.bind(&w->ffn_gate_tid2eid, p + "ffn_gate_tid2eid.weight", {I32},
                               {c.n_experts_used, c.vocab}));
    const int32_t* ids = w->ffn_gate_tid2eid.i32();
    const int64_t count = static_cast<int64_t>(c.n_experts_used) * c.vocab;
    for (int64_t i = 0; i < count; ++i) {
      if (ids[i] < 0 || ids[i] >= c.n_experts) {
        return Status::Error("tensor " + p + "ffn_gate_tid2eid.weight: entry " + std::to_string(i) + " (token " +
                             std::to_string(i / c.n_experts_used) + ") names expert " + std::to_string(ids[i]) +
                             ", outside [0, " + std::to_string(c.n_experts) + ")");
      }
    }
  }
  const std::vector<GgmlType> kRouted = {GgmlType::IQ2_XXS, GgmlType::Q2_K, GgmlType::Q4_K};
  const int64_t ffn = c.expert_ffn, ne = c.n_experts;
  DS4_RETURN_IF_ERROR(b.bind(&w->ffn_gate_exps, p + "ffn_gate_exps.weight", kRouted, {dim, ffn, ne}));
  DS4_RETURN_IF_ERROR(b.bind(&w->ffn_up_exps, p + "ffn_up_exps.weight", kRouted, {dim, ffn, ne}));
  DS4_RETURN_IF_ERROR(b.bind(&w->ffn_down_exps, p + "ffn_down_exps.weight", kRouted, {ffn, dim, ne}));
  if (w->ffn_gate_exps.type() != w->ffn_up_exps.type()) {
    return Status::Error("tensor " + p + "ffn_up_exps.weight has type " +
                         std::string(ggml_type_name(w->ffn_up_exps.type())) + ", expected the type of " + p +
                         "ffn_gate_exps.weight (" + std::string(ggml_type_name(w->ffn_gate_exps.type())) + ")");
  }
  if (c.n_shared_experts > 0) {
    DS4_RETURN_IF_ERROR(b.bind(&w->ffn_gate_shexp, p + "ffn_gate_shexp.weight", {Q8}, {dim, ffn}));
    DS4_RETURN_IF_ERROR(b.bind(&w->ffn_up_shexp, p + "ffn_up_shexp.weight", {Q8}, {dim, ffn}));
    DS4_RETURN_IF_ERROR(b.bind(&w->ffn_down_shexp, p + "ffn_down_shexp.weight", {Q8}, {ffn, dim}));
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Model>> Model::Load(const std::string& path) {
  auto gguf = GgufFile::Open(path);
  if (!gguf.ok()) return gguf.status();
  return FromGguf(std::move(gguf.value()));
}

Result<std::unique_ptr<Model>> Model::FromGguf(std::unique_ptr<GgufFile> gguf) {
  std::unique_ptr<Model> m(new Model());
  m->gguf_ = std::move(gguf);
  auto config = ModelConfig::FromGguf(*m->gguf_);
  if (!config.ok()) return config.status().wrap(m->gguf_->path());
  m->config_ = std::move(config.value());
  Status s = m->bind();
  if (!s.ok()) return s.wrap(m->gguf_->path());
  return m;
}

Status Model::bind() {
  const ModelConfig& c = config_;
  Binder b(*gguf_);
  DS4_RETURN_IF_ERROR(b.bind(&token_embd_, "token_embd.weight", {F16, F32}, {c.dim, c.vocab}));
  DS4_RETURN_IF_ERROR(b.bind(&output_, "output.weight", {Q8, F16, F32}, {c.dim, c.vocab}));
  DS4_RETURN_IF_ERROR(b.bind(&output_norm_, "output_norm.weight", {F32}, {c.dim}));
  DS4_RETURN_IF_ERROR(b.bind(&output_hc_fn_, "output_hc_fn.weight", {F16}, {c.hc_dim(), c.hc_mult}));
  DS4_RETURN_IF_ERROR(b.bind(&output_hc_scale_, "output_hc_scale.weight", {F32}, {1}));
  DS4_RETURN_IF_ERROR(b.bind(&output_hc_base_, "output_hc_base.weight", {F32}, {c.hc_mult}));
  layers_.assign(c.n_layers, LayerWeights{});
  for (int32_t l = 0; l < c.n_layers; ++l) {
    BlockSpec spec{"blk." + std::to_string(l) + ".", c.ratio(l), c.is_hash_layer(l), false};
    DS4_RETURN_IF_ERROR(bind_block(b, c, spec, c.swiglu_limit[l], &layers_[l]));
  }
  return Status::Ok();
}

Status Model::load_mtp(const std::string& path) {
  auto gguf = GgufFile::Open(path);
  if (!gguf.ok()) return gguf.status();
  auto mtp = std::make_unique<MtpWeights>();
  const ModelConfig& c = config_;
  Binder b(*gguf.value());
  const std::string p = "mtp.0.";
  auto bind_all = [&]() -> Status {
    DS4_RETURN_IF_ERROR(b.bind(&mtp->hc_head_fn, p + "hc_head_fn.weight", {F16, F32}, {c.hc_dim(), c.hc_mult}));
    DS4_RETURN_IF_ERROR(b.bind(&mtp->hc_head_scale, p + "hc_head_scale.weight", {F32}, {1}));
    DS4_RETURN_IF_ERROR(b.bind(&mtp->hc_head_base, p + "hc_head_base.weight", {F32}, {c.hc_mult}));
    DS4_RETURN_IF_ERROR(b.bind(&mtp->e_proj, p + "e_proj.weight", {Q8, F16, F32}, {c.dim, c.dim}));
    DS4_RETURN_IF_ERROR(b.bind(&mtp->h_proj, p + "h_proj.weight", {Q8, F16, F32}, {c.dim, c.dim}));
    DS4_RETURN_IF_ERROR(b.bind(&mtp->enorm, p + "enorm.weight", {F32}, {c.dim}));
    DS4_RETURN_IF_ERROR(b.bind(&mtp->hnorm, p + "hnorm.weight", {F32}, {c.dim}));
    DS4_RETURN_IF_ERROR(b.bind(&mtp->norm, p + "norm.weight", {F32}, {c.dim}));
    // The MTP block is not hash-routed; it uses the last swiglu clamp of the main layers.
    float limit = c.swiglu_limit.empty() ? 0.0f : c.swiglu_limit.back();
    BlockSpec spec{p, c.mtp_compress_ratio, false, true};
    return bind_block(b, c, spec, limit, &mtp->block);
  };
  Status s = bind_all();
  if (!s.ok()) return s.wrap(path);
  mtp_gguf_ = std::move(gguf.value());
  mtp_ = std::move(mtp);
  return Status::Ok();
}

uint64_t Model::weight_bytes() const {
  uint64_t total = 0;
  for (const GgufTensor& t : gguf_->tensors()) total += t.nbytes;
  return total;
}

}  // namespace ds4
