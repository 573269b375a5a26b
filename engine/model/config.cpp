#include "model/config.h"

#include <cmath>
#include <sstream>

#include "format/gguf.h"

namespace ds4 {
namespace {

constexpr const char* kArch = "deepseek4";

std::string key(const char* suffix) { return std::string(kArch) + "." + suffix; }

Status read_count(const GgufFile& g, const char* suffix, int32_t* out) {
  uint32_t v = 0;
  DS4_RETURN_IF_ERROR(g.get_u32(key(suffix), &v));
  if (v > 0x7fffffffu) return Status::Error("metadata key " + key(suffix) + " is too large");
  *out = static_cast<int32_t>(v);
  return Status::Ok();
}

// Optional count: absent means `fallback`.
Status read_count_or(const GgufFile& g, const char* suffix, int32_t fallback, int32_t* out) {
  if (g.find(key(suffix)) == nullptr) {
    *out = fallback;
    return Status::Ok();
  }
  return read_count(g, suffix, out);
}

// A real number stored as FLOAT32/FLOAT64 or as an integer (GGUF.md §4.1).
Status read_real(const GgufFile& g, const char* suffix, float* out) {
  const GgufValue* v = g.find(key(suffix));
  if (v == nullptr) return Status::Error("missing metadata key " + key(suffix));
  if (v->type == GgufValueType::FLOAT32 || v->type == GgufValueType::FLOAT64) {
    return g.get_f32(key(suffix), out);
  }
  int64_t i = 0;
  Status s = g.get_i64(key(suffix), &i);
  if (!s.ok()) {
    return Status::Error("metadata key " + key(suffix) + " must be a number, found " +
                         std::string(gguf_value_type_name(v->type)));
  }
  *out = static_cast<float>(i);
  return Status::Ok();
}

Status require_positive(const char* what, int64_t v) {
  if (v <= 0) return Status::Error("model config: " + std::string(what) + " must be positive, is " + std::to_string(v));
  return Status::Ok();
}

}  // namespace

Result<ModelConfig> ModelConfig::FromGguf(const GgufFile& g) {
  ModelConfig c;
  DS4_RETURN_IF_ERROR(read_count(g, "block_count", &c.n_layers));
  DS4_RETURN_IF_ERROR(read_count(g, "embedding_length", &c.dim));
  DS4_RETURN_IF_ERROR(read_count(g, "vocab_size", &c.vocab));
  DS4_RETURN_IF_ERROR(read_count(g, "attention.head_count", &c.n_heads));
  int32_t kv_heads = 0;
  DS4_RETURN_IF_ERROR(read_count(g, "attention.head_count_kv", &kv_heads));
  if (kv_heads != 1) {
    return Status::Error("metadata key " + key("attention.head_count_kv") +
                         " must be 1 (one shared KV row), is " + std::to_string(kv_heads));
  }
  DS4_RETURN_IF_ERROR(read_count(g, "attention.key_length", &c.head_dim));
  int32_t value_length = 0;
  DS4_RETURN_IF_ERROR(read_count(g, "attention.value_length", &value_length));
  if (value_length != c.head_dim) {
    return Status::Error("metadata key " + key("attention.value_length") + " (" +
                         std::to_string(value_length) + ") must equal attention.key_length (" +
                         std::to_string(c.head_dim) + "): K and V are the same row");
  }
  DS4_RETURN_IF_ERROR(read_count(g, "rope.dimension_count", &c.rope_dim));
  DS4_RETURN_IF_ERROR(read_count(g, "attention.q_lora_rank", &c.q_lora));
  DS4_RETURN_IF_ERROR(read_count(g, "attention.output_group_count", &c.out_groups));
  DS4_RETURN_IF_ERROR(read_count(g, "attention.output_lora_rank", &c.out_lora));
  DS4_RETURN_IF_ERROR(read_count(g, "attention.sliding_window", &c.window));

  std::vector<int64_t> ratios;
  DS4_RETURN_IF_ERROR(g.get_i64_array(key("attention.compress_ratios"), &ratios));
  if (static_cast<int64_t>(ratios.size()) < c.n_layers) {
    return Status::Error("metadata key " + key("attention.compress_ratios") + " has " +
                         std::to_string(ratios.size()) + " entries, block_count is " +
                         std::to_string(c.n_layers));
  }
  for (size_t i = 0; i < ratios.size(); ++i) {
    if (ratios[i] < 0 || ratios[i] > (1 << 20)) {
      return Status::Error("metadata key " + key("attention.compress_ratios") + " entry " +
                           std::to_string(i) + " is invalid: " + std::to_string(ratios[i]));
    }
  }
  c.compress_ratios.assign(ratios.begin(), ratios.begin() + c.n_layers);
  c.mtp_compress_ratio = static_cast<int64_t>(ratios.size()) > c.n_layers
                             ? static_cast<int32_t>(ratios[c.n_layers]) : 0;

  DS4_RETURN_IF_ERROR(read_count(g, "attention.indexer.head_count", &c.index_heads));
  DS4_RETURN_IF_ERROR(read_count(g, "attention.indexer.key_length", &c.index_head_dim));
  DS4_RETURN_IF_ERROR(read_count(g, "attention.indexer.top_k", &c.index_topk));

  DS4_RETURN_IF_ERROR(read_count(g, "expert_count", &c.n_experts));
  DS4_RETURN_IF_ERROR(read_count(g, "expert_used_count", &c.n_experts_used));
  DS4_RETURN_IF_ERROR(read_count(g, "expert_shared_count", &c.n_shared_experts));
  DS4_RETURN_IF_ERROR(read_count(g, "expert_feed_forward_length", &c.expert_ffn));
  DS4_RETURN_IF_ERROR(read_count(g, "hash_layer_count", &c.n_hash_layers));
  int32_t groups = 0, groups_used = 0;
  DS4_RETURN_IF_ERROR(read_count_or(g, "expert_group_count", 0, &groups));
  DS4_RETURN_IF_ERROR(read_count_or(g, "expert_group_used_count", 0, &groups_used));
  if (groups > 1 || groups_used > 1) {
    return Status::Error("metadata key " + key("expert_group_count") +
                         ": grouped expert routing is not part of DeepSeek V4 Flash");
  }
  DS4_RETURN_IF_ERROR(read_real(g, "expert_weights_scale", &c.route_scale));
  DS4_RETURN_IF_ERROR(g.get_bool(key("expert_weights_norm"), &c.route_norm));
  std::vector<float> clamp;
  DS4_RETURN_IF_ERROR(g.get_f32_array(key("swiglu_clamp_exp"), &clamp));
  if (static_cast<int64_t>(clamp.size()) < c.n_layers) {
    return Status::Error("metadata key " + key("swiglu_clamp_exp") + " has " +
                         std::to_string(clamp.size()) + " entries, block_count is " +
                         std::to_string(c.n_layers));
  }
  c.swiglu_limit.assign(clamp.begin(), clamp.begin() + c.n_layers);

  DS4_RETURN_IF_ERROR(read_real(g, "rope.freq_base", &c.rope_theta));
  DS4_RETURN_IF_ERROR(read_real(g, "attention.compress_rope_freq_base", &c.compress_rope_theta));
  DS4_RETURN_IF_ERROR(read_real(g, "rope.scaling.factor", &c.rope_factor));
  DS4_RETURN_IF_ERROR(read_real(g, "rope.scaling.yarn_beta_fast", &c.beta_fast));
  DS4_RETURN_IF_ERROR(read_real(g, "rope.scaling.yarn_beta_slow", &c.beta_slow));
  uint64_t orig = 0;
  DS4_RETURN_IF_ERROR(g.get_u64(key("rope.scaling.original_context_length"), &orig));
  c.original_ctx = static_cast<int64_t>(orig);

  DS4_RETURN_IF_ERROR(read_real(g, "attention.layer_norm_rms_epsilon", &c.norm_eps));
  DS4_RETURN_IF_ERROR(read_count(g, "hyper_connection.count", &c.hc_mult));
  DS4_RETURN_IF_ERROR(read_count(g, "hyper_connection.sinkhorn_iterations", &c.hc_sinkhorn_iters));
  DS4_RETURN_IF_ERROR(read_real(g, "hyper_connection.epsilon", &c.hc_eps));

  if (g.find(key("context_length")) != nullptr) {
    uint64_t ctx = 0;
    DS4_RETURN_IF_ERROR(g.get_u64(key("context_length"), &ctx));
    c.context_length = static_cast<int64_t>(ctx);
  }

  DS4_RETURN_IF_ERROR(c.validate());
  return c;
}

Status ModelConfig::validate() const {
  DS4_RETURN_IF_ERROR(require_positive("block_count", n_layers));
  DS4_RETURN_IF_ERROR(require_positive("embedding_length", dim));
  DS4_RETURN_IF_ERROR(require_positive("vocab_size", vocab));
  DS4_RETURN_IF_ERROR(require_positive("attention.head_count", n_heads));
  DS4_RETURN_IF_ERROR(require_positive("attention.key_length", head_dim));
  DS4_RETURN_IF_ERROR(require_positive("rope.dimension_count", rope_dim));
  DS4_RETURN_IF_ERROR(require_positive("attention.q_lora_rank", q_lora));
  DS4_RETURN_IF_ERROR(require_positive("attention.output_group_count", out_groups));
  DS4_RETURN_IF_ERROR(require_positive("attention.output_lora_rank", out_lora));
  DS4_RETURN_IF_ERROR(require_positive("attention.sliding_window", window));
  DS4_RETURN_IF_ERROR(require_positive("expert_count", n_experts));
  DS4_RETURN_IF_ERROR(require_positive("expert_used_count", n_experts_used));
  DS4_RETURN_IF_ERROR(require_positive("expert_feed_forward_length", expert_ffn));
  DS4_RETURN_IF_ERROR(require_positive("hyper_connection.count", hc_mult));
  DS4_RETURN_IF_ERROR(require_positive("hyper_connection.sinkhorn_iterations", hc_sinkhorn_iters));
  if (hc_mult > 16) {
    return Status::Error("model config: hyper_connection.count " + std::to_string(hc_mult) +
                         " exceeds the supported 16 streams");
  }
  if (rope_dim > head_dim || rope_dim % 2 != 0) {
    return Status::Error("model config: rope.dimension_count (" + std::to_string(rope_dim) +
                         ") must be even and at most attention.key_length (" + std::to_string(head_dim) + ")");
  }
  if (n_heads % out_groups != 0) {
    return Status::Error("model config: attention.head_count (" + std::to_string(n_heads) +
                         ") is not a multiple of attention.output_group_count (" +
                         std::to_string(out_groups) + ")");
  }
  if (n_experts_used > n_experts) {
    return Status::Error("model config: expert_used_count (" + std::to_string(n_experts_used) +
                         ") exceeds expert_count (" + std::to_string(n_experts) + ")");
  }
  if (n_shared_experts > 1) {
    return Status::Error("model config: expert_shared_count " + std::to_string(n_shared_experts) +
                         " is not supported (DeepSeek V4 Flash has one shared expert)");
  }
  if (n_hash_layers < 0 || n_hash_layers > n_layers) {
    return Status::Error("model config: hash_layer_count " + std::to_string(n_hash_layers) +
                         " is outside [0, block_count]");
  }
  if (static_cast<int32_t>(compress_ratios.size()) != n_layers ||
      static_cast<int32_t>(swiglu_limit.size()) != n_layers) {
    return Status::Error("model config: per-layer arrays must have block_count entries");
  }
  bool any_ratio4 = false;
  for (int32_t l = 0; l < n_layers; ++l) {
    int32_t r = compress_ratios[l];
    if (r < 0 || r == 1) {
      return Status::Error("model config: attention.compress_ratios[" + std::to_string(l) +
                           "] = " + std::to_string(r) + " is invalid");
    }
    if (r == 4) any_ratio4 = true;
  }
  if (any_ratio4) {
    DS4_RETURN_IF_ERROR(require_positive("attention.indexer.head_count", index_heads));
    DS4_RETURN_IF_ERROR(require_positive("attention.indexer.key_length", index_head_dim));
    DS4_RETURN_IF_ERROR(require_positive("attention.indexer.top_k", index_topk));
    if (rope_dim > index_head_dim) {
      return Status::Error("model config: rope.dimension_count exceeds attention.indexer.key_length");
    }
    if ((index_head_dim & (index_head_dim - 1)) != 0 || index_head_dim % 32 != 0) {
      return Status::Error("model config: attention.indexer.key_length " + std::to_string(index_head_dim) +
                           " must be a power of two and a multiple of 32 (Hadamard + FP4 blocks)");
    }
  }
  if (nope_dim() % 64 != 0) {
    return Status::Error("model config: key_length - rope.dimension_count (" + std::to_string(nope_dim()) +
                         ") must be a multiple of 64 (FP8 blocks)");
  }
  if (!(rope_theta > 0) || !(compress_rope_theta > 0) || !(rope_factor > 0)) {
    return Status::Error("model config: rope.freq_base, attention.compress_rope_freq_base and rope.scaling.factor must be positive");
  }
  if (!(norm_eps > 0) || !(hc_eps >= 0)) {
    return Status::Error("model config: attention.layer_norm_rms_epsilon must be positive");
  }
  return Status::Ok();
}

std::string ModelConfig::summary() const {
  std::ostringstream s;
  s << "layers " << n_layers << ", dim " << dim << ", vocab " << vocab << ", heads " << n_heads << "x"
    << head_dim << " (rope " << rope_dim << "), q_lora " << q_lora << ", out " << out_groups << "x"
    << out_lora << ", window " << window << ", ratios [";
  for (int32_t l = 0; l < n_layers; ++l) s << (l ? "," : "") << compress_ratios[l];
  s << "], indexer " << index_heads << "x" << index_head_dim << " top-" << index_topk << ", experts "
    << n_experts << " (" << n_experts_used << " used, " << n_shared_experts << " shared, ffn "
    << expert_ffn << "), hash layers " << n_hash_layers << ", hc " << hc_mult;
  return s.str();
}

}  // namespace ds4
