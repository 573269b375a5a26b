// ModelConfig: the DeepSeek V4 Flash hyperparameters of one GGUF file, read ONLY from
// its metadata (spec/GGUF.md §4, MODEL.md §1). Nothing is sized to the real model in
// code: the test fixtures use other dimensions, windows, ratios and top-k values.
//
// Thread-safety: a plain value; immutable after FromGguf.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace ds4 {

class GgufFile;

struct ModelConfig {
  // Sizes.
  int32_t n_layers = 0;          // block_count (main blocks, without MTP)
  int32_t dim = 0;               // embedding_length
  int32_t vocab = 0;             // vocab_size
  int32_t n_heads = 0;           // attention.head_count
  int32_t head_dim = 0;          // attention.key_length (= value_length; K = V)
  int32_t rope_dim = 0;          // rope.dimension_count: the LAST rope_dim dims of a head rotate
  int32_t q_lora = 0;            // attention.q_lora_rank
  int32_t out_groups = 0;        // attention.output_group_count
  int32_t out_lora = 0;          // attention.output_lora_rank (per group)
  int32_t window = 0;            // attention.sliding_window: raw rows incl. the current token

  // Compression: per main layer (0 = raw window only), and the MTP block's ratio.
  std::vector<int32_t> compress_ratios;
  int32_t mtp_compress_ratio = 0;

  // Indexer (ratio-4 layers).
  int32_t index_heads = 0;       // attention.indexer.head_count
  int32_t index_head_dim = 0;    // attention.indexer.key_length
  int32_t index_topk = 0;        // attention.indexer.top_k

  // MoE.
  int32_t n_experts = 0;         // expert_count
  int32_t n_experts_used = 0;    // expert_used_count
  int32_t n_shared_experts = 0;  // expert_shared_count
  int32_t expert_ffn = 0;        // expert_feed_forward_length
  int32_t n_hash_layers = 0;     // hash_layer_count: layers [0, n) route by token id
  float route_scale = 1.0f;      // expert_weights_scale
  bool route_norm = true;        // expert_weights_norm
  std::vector<float> swiglu_limit;  // swiglu_clamp_exp, per main layer (<= 0: no clamp)

  // RoPE / YaRN.
  float rope_theta = 0;          // rope.freq_base (ratio-0 layers, MTP)
  float compress_rope_theta = 0; // attention.compress_rope_freq_base (compressed layers)
  float rope_factor = 1;         // rope.scaling.factor
  float beta_fast = 0;           // rope.scaling.yarn_beta_fast
  float beta_slow = 0;           // rope.scaling.yarn_beta_slow
  int64_t original_ctx = 0;      // rope.scaling.original_context_length

  // Norms and hyper-connections.
  float norm_eps = 1e-6f;        // attention.layer_norm_rms_epsilon
  int32_t hc_mult = 0;           // hyper_connection.count
  int32_t hc_sinkhorn_iters = 0; // hyper_connection.sinkhorn_iterations
  float hc_eps = 1e-6f;          // hyper_connection.epsilon

  int64_t context_length = 0;    // context_length (informational; 0 when absent)

  // Derived helpers.
  int32_t nope_dim() const { return head_dim - rope_dim; }
  int32_t hc_dim() const { return hc_mult * dim; }                 // one token's HC state
  int32_t hc_mix() const { return (2 + hc_mult) * hc_mult; }       // pre + post + comb values
  int32_t heads_per_group() const { return n_heads / out_groups; }
  int32_t ratio(int32_t layer) const { return compress_ratios[layer]; }
  bool is_hash_layer(int32_t layer) const { return layer < n_hash_layers; }
  // Compressor projection width for a ratio (2x head dim with the ratio-4 overlap).
  static int32_t compressor_coff(int32_t ratio) { return ratio == 4 ? 2 : 1; }

  // Reads every key from `gguf` (prefix "<general.architecture>.", "deepseek4" by
  // default). Errors name the missing or invalid key.
  static Result<ModelConfig> FromGguf(const GgufFile& gguf);

  // Checks internal consistency (positive sizes, divisibility, array lengths);
  // errors name the offending field.
  Status validate() const;

  // One-line human summary (for logs).
  std::string summary() const;
};

}  // namespace ds4
