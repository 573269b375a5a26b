// DeviceModel: every weight of a DeepSeek V4 Flash model resident in GPU memory,
// in the layouts of cuda/device_matrix.h, plus the RoPE frequency tables. Built by
// upload_model() from a loaded Model (the file's bytes copied unchanged through
// pinned staging buffers by several threads, one stream each; Q8_0 / IQ2_XXS blocks
// are split into their device layout on the GPU through a bounded scratch buffer,
// cuda/repack.h) or by make_synthetic_model() (random valid blocks of the real
// shapes and types generated on the GPU, no file).
//
// All tensors live in one device allocation owned by the DeviceModel.
// Thread-safety: immutable after creation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "cuda/device_matrix.h"
#include "model/config.h"

namespace ds4 {

class Model;

struct DeviceCompressor {
  DeviceMatrix kv, gate;          // F16 [dim] -> w
  float* ape = nullptr;           // [ratio][w]
  float* norm = nullptr;          // [d]
};

struct DeviceLayer {
  int32_t ratio = 0;
  bool hash = false;
  float swiglu_limit = 0;
  DeviceMatrix hc_attn_fn, hc_ffn_fn;
  float *hc_attn_scale = nullptr, *hc_attn_base = nullptr;
  float *hc_ffn_scale = nullptr, *hc_ffn_base = nullptr;
  float* attn_norm = nullptr;
  DeviceMatrix q_a, q_b, kv, out_a, out_b;
  float *q_a_norm = nullptr, *kv_a_norm = nullptr, *sinks = nullptr;
  DeviceCompressor compressor;    // ratio != 0
  DeviceMatrix index_q_b, index_proj;  // ratio == 4
  DeviceCompressor index_compressor;
  float* ffn_norm = nullptr;
  DeviceMatrix gate_inp;
  float* exp_probs_b = nullptr;   // optional
  int32_t* tid2eid = nullptr;     // hash layers
  DeviceMatrix gate_exps, up_exps, down_exps;
  DeviceMatrix gate_shexp, up_shexp, down_shexp;
};

// The MTP draft block's own tensors beside its block (spec/MODEL.md §2.11); the
// block itself is DeviceModel::layer(n_layers), its embedding and output head are the
// main model's.
struct DeviceMtp {
  DeviceMatrix e_proj, h_proj, hc_head_fn;
  float *enorm = nullptr, *hnorm = nullptr, *norm = nullptr;
  float *hc_head_scale = nullptr, *hc_head_base = nullptr;
};

// Whether the file pages of uploaded tensors are dropped from the page cache once
// they are staged (see upload_model). kAuto: only when the GPU shares its memory with
// the CPU (cudaDevAttrIntegrated, e.g. GB10), where the cache and the device copy
// would otherwise hold the model twice in the same memory.
enum class PageCacheDrop { kAuto, kNever, kAlways };

// How upload_model / upload_matrix move bytes.
struct UploadOptions {
  int threads = 0;            // staging threads, one CUDA stream each (0: 8)
  size_t chunk_bytes = 0;     // source bytes per staged piece (0: 32 MiB)
  bool host_repack = false;   // split Q8_0 / IQ2_XXS on the host (the former path, kept
                              // for comparison); default: on the GPU
  PageCacheDrop drop_page_cache = PageCacheDrop::kAuto;
  // upload_matrix only: the file that `host` maps (read-only, at a page-aligned
  // mapping) and the file offset of host[0]; empty: the bytes are not a file mapping
  // and nothing is dropped. upload_model takes both from the Model.
  std::string file_path;
  uint64_t file_offset = 0;
};

struct UploadStats {
  uint64_t bytes = 0;   // bytes written to the device
  double seconds = 0;   // wall time of the transfer
  uint64_t scratch_bytes = 0;      // device scratch used for GPU repacking (freed after)
  bool page_cache_dropped = false; // file pages were dropped as they were staged
  double gib_per_s() const { return seconds > 0 ? bytes / seconds / (1024.0 * 1024.0 * 1024.0) : 0; }
};

class DeviceModel {
 public:
  ~DeviceModel();
  DeviceModel(const DeviceModel&) = delete;
  DeviceModel& operator=(const DeviceModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const DeviceLayer& layer(int i) const { return layers_[i]; }
  // True when the Model had its MTP block loaded: then layer(config().n_layers) is
  // that block (ratio 0, not hash-routed) and mtp() holds its input and head tensors.
  bool has_mtp() const { return has_mtp_; }
  const DeviceMtp& mtp() const { return mtp_; }
  const DeviceMatrix& token_embd() const { return token_embd_; }
  const DeviceMatrix& output() const { return output_; }
  const DeviceMatrix& output_hc_fn() const { return output_hc_fn_; }
  const float* output_norm() const { return output_norm_; }
  const float* output_hc_scale() const { return output_hc_scale_; }
  const float* output_hc_base() const { return output_hc_base_; }
  // RoPE frequencies (rope_dim/2 floats): plain for ratio-0 layers, YaRN for compressed.
  const float* rope_freqs(bool compressed) const { return compressed ? rope_yarn_ : rope_plain_; }
  uint64_t device_bytes() const { return arena_bytes_; }
  // Hands the allocation to the caller (who must cudaFree it); the model keeps none.
  void* release_arena() {
    void* a = arena_;
    arena_ = nullptr;
    return a;
  }

 private:
  friend class DeviceModelBuilder;
  DeviceModel() = default;

  ModelConfig config_;
  std::vector<DeviceLayer> layers_;
  DeviceMatrix token_embd_, output_, output_hc_fn_;
  float *output_norm_ = nullptr, *output_hc_scale_ = nullptr, *output_hc_base_ = nullptr;
  float *rope_plain_ = nullptr, *rope_yarn_ = nullptr;
  bool has_mtp_ = false;
  DeviceMtp mtp_;
  void* arena_ = nullptr;
  uint64_t arena_bytes_ = 0;
};

// Uploads every main-model tensor of `model` with `threads` staging threads (0: 8),
// and the MTP block's tensors when the model has one loaded (Model::load_mtp; only a
// block of compression ratio 0 is accepted). Errors name the tensor whose type or
// shape the kernels cannot read.
Result<std::unique_ptr<DeviceModel>> upload_model(const Model& model, int threads,
                                                  UploadStats* stats);
// Same with every option. With page-cache dropping on, each staged file range is
// unmapped from the Model's mapping and dropped from the page cache (the mapping stays
// valid: a later read faults the bytes back in from the file).
Result<std::unique_ptr<DeviceModel>> upload_model(const Model& model, const UploadOptions& options,
                                                  UploadStats* stats);

// A model of `config`'s shapes with the real file's tensor types (MODEL.md §1.4),
// filled on the GPU with random valid blocks from `seed`.
Result<std::unique_ptr<DeviceModel>> make_synthetic_model(const ModelConfig& config,
                                                          uint64_t seed);

// One matrix in its own device allocation (tests, micro-benchmarks).
struct OwnedDeviceMatrix {
  DeviceMatrix m;
  void* memory = nullptr;
  OwnedDeviceMatrix() = default;
  OwnedDeviceMatrix(const OwnedDeviceMatrix&) = delete;
  OwnedDeviceMatrix& operator=(const OwnedDeviceMatrix&) = delete;
  ~OwnedDeviceMatrix();
};

// `host` holds count*rows rows of `cols` elements in the file layout of `type`.
// `threads` staging threads; `stats` (optional) receives the transfer rate.
Result<std::unique_ptr<OwnedDeviceMatrix>> upload_matrix(GgmlType type, int64_t cols, int64_t rows,
                                                         int64_t count, const uint8_t* host,
                                                         int threads = 1, UploadStats* stats = nullptr);
Result<std::unique_ptr<OwnedDeviceMatrix>> upload_matrix(GgmlType type, int64_t cols, int64_t rows,
                                                         int64_t count, const uint8_t* host,
                                                         const UploadOptions& options,
                                                         UploadStats* stats);
// Random valid blocks generated on the GPU (the synthetic model's fill rule).
Result<std::unique_ptr<OwnedDeviceMatrix>> random_matrix(GgmlType type, int64_t cols, int64_t rows,
                                                         int64_t count, uint64_t seed);

// The real DeepSeek V4 Flash configuration (MODEL.md §1.1), for synthetic runs.
ModelConfig deepseek_v4_flash_config();

}  // namespace ds4
