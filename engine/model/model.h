// Model: a loaded DeepSeek V4 Flash GGUF (and optionally its MTP GGUF), with its
// configuration (model/config.h) and every tensor bound per layer after an exact
// type and shape check (spec/GGUF.md §5, §7). Weights stay in the file mapping; a
// Weight is a view (tensor pointer + type + ne) into it.
//
// Thread-safety: immutable after Load / load_mtp; const methods may be called from
// any thread. load_mtp must not race with readers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "format/ggml_type.h"
#include "format/gguf.h"
#include "model/config.h"

namespace ds4 {

// A bound tensor. 2-D weights are [in, out] in ggml order: `rows()` output rows of
// `cols()` inputs, each row contiguous. 3-D expert tensors stack `mats()` matrices
// (one per expert), expert-major (GGUF.md §5.6).
struct Weight {
  const GgufTensor* tensor = nullptr;

  bool present() const { return tensor != nullptr; }
  GgmlType type() const { return tensor->type; }
  const std::vector<int64_t>& ne() const { return tensor->ne; }
  int64_t cols() const { return tensor->ne[0]; }
  int64_t rows() const { return tensor->ne.size() > 1 ? tensor->ne[1] : 1; }
  int64_t mats() const { return tensor->ne.size() > 2 ? tensor->ne[2] : 1; }
  const uint8_t* data() const { return tensor->data; }
  size_t row_bytes() const { return tensor->row_bytes(); }
  // Row `r` of matrix `mat` (expert index for 3-D tensors).
  const uint8_t* row(int64_t r, int64_t mat = 0) const {
    return tensor->data + (mat * rows() + r) * row_bytes();
  }
  // Typed access for F32 / I32 tensors.
  const float* f32() const { return reinterpret_cast<const float*>(tensor->data); }
  const int32_t* i32() const { return reinterpret_cast<const int32_t*>(tensor->data); }
};

// Compressor weights (MODEL.md §2.5.3); width w = coff * d.
struct CompressorWeights {
  Weight ape;    // F16 [w, ratio]: row = phase (pos mod ratio)
  Weight kv;     // F16 [dim, w]
  Weight gate;   // F16 [dim, w]
  Weight norm;   // F32 [d]
};

// Indexer weights (ratio-4 layers, MODEL.md §2.5.4).
struct IndexerWeights {
  Weight q_b;    // F16 [q_lora, index_heads * index_head_dim]
  Weight proj;   // F16 [dim, index_heads]
  CompressorWeights compressor;  // d = index_head_dim
};

// One transformer block (main layer or the MTP block).
struct LayerWeights {
  int32_t ratio = 0;        // compression ratio of this block
  bool hash = false;        // routes by token id (tid2eid)
  float swiglu_limit = 0;   // SwiGLU clamp (<= 0: none)

  // Hyper-connections around attention and FFN.
  Weight hc_attn_fn, hc_attn_scale, hc_attn_base;
  Weight hc_ffn_fn, hc_ffn_scale, hc_ffn_base;

  // Attention.
  Weight attn_norm;
  Weight attn_q_a, attn_q_a_norm, attn_q_b;
  Weight attn_kv, attn_kv_a_norm;
  Weight attn_sinks;
  Weight attn_output_a, attn_output_b;
  CompressorWeights compressor;   // present iff ratio != 0
  IndexerWeights indexer;         // present iff ratio == 4

  // MoE.
  Weight ffn_norm;
  Weight ffn_gate_inp;            // router [dim, n_experts]
  Weight exp_probs_b;             // optional selection bias [n_experts]
  Weight ffn_gate_tid2eid;        // I32 [n_used, vocab], hash layers only
  Weight ffn_gate_exps, ffn_up_exps, ffn_down_exps;
  Weight ffn_gate_shexp, ffn_up_shexp, ffn_down_shexp;
};

// The MTP block and its head (GGUF.md §5.9, MODEL.md §2.11).
struct MtpWeights {
  Weight hc_head_fn, hc_head_scale, hc_head_base;
  Weight e_proj, h_proj;
  Weight enorm, hnorm, norm;
  LayerWeights block;
};

class Model {
 public:
  // Opens the GGUF at `path`, reads the configuration and binds every tensor.
  static Result<std::unique_ptr<Model>> Load(const std::string& path);
  // Builds a Model from an already opened file (tests).
  static Result<std::unique_ptr<Model>> FromGguf(std::unique_ptr<GgufFile> gguf);

  // Opens the separate MTP GGUF and binds its block (no metadata is needed from it).
  Status load_mtp(const std::string& path);

  const GgufFile& gguf() const { return *gguf_; }
  const ModelConfig& config() const { return config_; }
  const std::string& path() const { return gguf_->path(); }

  // Global tensors.
  const Weight& token_embd() const { return token_embd_; }
  const Weight& output() const { return output_; }
  const Weight& output_norm() const { return output_norm_; }
  const Weight& output_hc_fn() const { return output_hc_fn_; }
  const Weight& output_hc_scale() const { return output_hc_scale_; }
  const Weight& output_hc_base() const { return output_hc_base_; }

  int32_t n_layers() const { return config_.n_layers; }
  const LayerWeights& layer(int32_t i) const { return layers_[i]; }

  bool has_mtp() const { return mtp_ != nullptr; }
  const MtpWeights& mtp() const { return *mtp_; }
  const GgufFile* mtp_gguf() const { return mtp_gguf_.get(); }

  // Total bytes of bound tensor data (main file).
  uint64_t weight_bytes() const;

 private:
  Model() = default;
  Status bind();

  std::unique_ptr<GgufFile> gguf_;
  ModelConfig config_;
  Weight token_embd_, output_, output_norm_;
  Weight output_hc_fn_, output_hc_scale_, output_hc_base_;
  std::vector<LayerWeights> layers_;
  std::unique_ptr<GgufFile> mtp_gguf_;
  std::unique_ptr<MtpWeights> mtp_;
};

}  // namespace ds4
