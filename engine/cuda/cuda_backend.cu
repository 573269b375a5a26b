#include "cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/device_model.h"
#include "cuda/forward.h"
#include "model/model.h"

namespace ds4 {
namespace {

// The Backend over CudaForward: validates batches, keeps sequence lengths, and
// runs each token of a batch as one graph replay of its sequence.
class CudaBackend : public Backend {
 public:
  CudaBackend(std::unique_ptr<DeviceModel> model, std::unique_ptr<CudaForward> forward,
              const BackendOptions& options)
      : model_(std::move(model)), forward_(std::move(forward)), options_(options) {}
  ~CudaBackend() override {
    forward_.reset();
    model_.reset();
  }

  std::string_view name() const override { return "cuda"; }

  Result<SeqId> new_sequence(int32_t max_ctx) override {
    Result<int> id = forward_->new_sequence(max_ctx);
    if (!id.ok()) return id.status();
    if (static_cast<size_t>(*id) >= lengths_.size()) lengths_.resize(*id + 1, 0);
    lengths_[*id] = 0;
    return static_cast<SeqId>(*id);
  }

  void free_sequence(SeqId seq) override { forward_->free_sequence(seq); }

  int32_t sequence_length(SeqId seq) const override {
    return forward_->valid(seq) ? lengths_[seq] : 0;
  }

  Status truncate(SeqId seq, int32_t n) override {
    if (!forward_->valid(seq)) return Status::Error("CUDA backend: unknown sequence " + std::to_string(seq));
    const int32_t len = lengths_[seq];
    if (n < 0 || n > len) {
      return Status::Error("CUDA backend: cannot truncate sequence " + std::to_string(seq) + " of length " +
                           std::to_string(len) + " to " + std::to_string(n));
    }
    if (n != 0 && n < len - kMaxRollback) {
      return Status::Error("CUDA backend: truncating sequence " + std::to_string(seq) + " by " +
                           std::to_string(len - n) + " tokens exceeds the rollback limit of " +
                           std::to_string(kMaxRollback));
    }
    // The MTP block's rows of the dropped positions go too (as on the CPU backend).
    DS4_RETURN_IF_ERROR(forward_->forget_mtp_from(seq, n));
    lengths_[seq] = n;
    return Status::Ok();
  }

  bool has_mtp() const override { return forward_->has_mtp(); }

  // Each token is one replay of its sequence's MTP graph, in batch order (tokens of a
  // sequence see the rows of the ones before them, as in the CPU's batched run).
  Status forward_mtp(std::span<const MtpToken> batch, ForwardOutput* out) override {
    out->logits.clear();
    out->hidden.clear();
    if (!has_mtp()) {
      return Status::Error(
          "CUDA backend: no MTP block (load the MTP file with Model::load_mtp before creating the backend)");
    }
    DS4_RETURN_IF_ERROR(validate_mtp(batch));
    const ModelConfig& c = model_->config();
    size_t n_logits = 0, n_hidden = 0;
    for (const MtpToken& t : batch) {
      n_logits += t.want_logits;
      n_hidden += t.want_hidden;
    }
    out->logits.assign(n_logits * c.vocab, 0.0f);
    out->hidden.assign(n_hidden * static_cast<size_t>(c.hc_dim()), 0.0f);
    size_t li = 0, hi = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const MtpToken& t = batch[i];
      float* logits = t.want_logits ? out->logits.data() + li++ * c.vocab : nullptr;
      float* hidden = t.want_hidden ? out->hidden.data() + hi++ * c.hc_dim() : nullptr;
      Status s = forward_->mtp_step(t.seq, t.token, t.pos, t.hidden, logits, hidden);
      if (!s.ok()) {
        out->logits.clear();
        out->hidden.clear();
        return s.wrap("CUDA backend: MTP token " + std::to_string(i));
      }
    }
    return Status::Ok();
  }

  // The argmax is computed inside the decode graph; only its 4 bytes come back.
  Result<int32_t> forward_greedy(const BatchToken& t) override {
    BatchToken one = t;
    one.want_logits = one.want_hidden = false;
    DS4_RETURN_IF_ERROR(validate(std::span<const BatchToken>(&one, 1)));
    DS4_RETURN_IF_ERROR(forward_->step(t.seq, t.token, t.pos, nullptr, nullptr));
    Result<int32_t> token = forward_->last_argmax();
    if (!token.ok()) return token.status();
    lengths_[t.seq] = t.pos + 1;
    return token;
  }

  Status forward(std::span<const BatchToken> batch, ForwardOutput* out) override {
    DS4_RETURN_IF_ERROR(validate(batch));
    const ModelConfig& c = model_->config();
    size_t n_logits = 0, n_hidden = 0;
    for (const BatchToken& t : batch) {
      n_logits += t.want_logits;
      n_hidden += t.want_hidden;
    }
    out->logits.assign(n_logits * c.vocab, 0.0f);
    out->hidden.assign(n_hidden * static_cast<size_t>(c.hc_dim()), 0.0f);
    std::vector<int32_t> saved = lengths_;
    size_t li = 0, hi = 0;
    // Consecutive tokens of one sequence run as one batched prefill (prompts, MTP
    // verification); a lone token replays the sequence's decode graph.
    for (size_t i = 0; i < batch.size();) {
      size_t j = i + 1;
      while (j < batch.size() && batch[j].seq == batch[i].seq && j - i < CudaForward::kMaxPrefill) ++j;
      Status s = run(batch.subspan(i, j - i), out, &li, &hi);
      if (!s.ok()) {
        lengths_ = saved;
        return s;
      }
      lengths_[batch[i].seq] = batch[j - 1].pos + 1;
      i = j;
    }
    return Status::Ok();
  }

 private:
  // Runs tokens of one sequence at consecutive positions; their wanted rows go to
  // out->logits / out->hidden from rows *li / *hi on (advanced).
  Status run(std::span<const BatchToken> run, ForwardOutput* out, size_t* li, size_t* hi) {
    const ModelConfig& c = model_->config();
    if (run.size() == 1) {
      const BatchToken& t = run[0];
      float* logits = t.want_logits ? out->logits.data() + (*li)++ * c.vocab : nullptr;
      float* hidden = t.want_hidden ? out->hidden.data() + (*hi)++ * c.hc_dim() : nullptr;
      return forward_->step(t.seq, t.token, t.pos, logits, hidden);
    }
    std::vector<int32_t> tokens(run.size());
    std::vector<int> logit_rows, hidden_rows;
    for (size_t k = 0; k < run.size(); ++k) {
      tokens[k] = run[k].token;
      if (run[k].want_logits) logit_rows.push_back(static_cast<int>(k));
      if (run[k].want_hidden) hidden_rows.push_back(static_cast<int>(k));
    }
    float* logits = out->logits.data() + *li * c.vocab;
    float* hidden = out->hidden.data() + *hi * c.hc_dim();
    *li += logit_rows.size();
    *hi += hidden_rows.size();
    return forward_->prefill(run[0].seq, tokens.data(), static_cast<int>(run.size()), run[0].pos, logit_rows,
                             logits, hidden_rows, hidden);
  }

  Status validate(std::span<const BatchToken> batch) const {
    if (static_cast<int32_t>(batch.size()) > options_.max_batch) {
      return Status::Error("CUDA backend: batch of " + std::to_string(batch.size()) +
                           " tokens exceeds max_batch " + std::to_string(options_.max_batch));
    }
    std::vector<int32_t> next = lengths_;
    for (size_t i = 0; i < batch.size(); ++i) {
      const BatchToken& t = batch[i];
      const std::string where = "CUDA backend: batch token " + std::to_string(i) + ": ";
      if (!forward_->valid(t.seq)) return Status::Error(where + "unknown sequence " + std::to_string(t.seq));
      if (t.pos != next[t.seq]) {
        return Status::Error(where + "position " + std::to_string(t.pos) + " does not continue sequence " +
                             std::to_string(t.seq) + " (expected " + std::to_string(next[t.seq]) + ")");
      }
      if (t.pos >= forward_->max_ctx(t.seq)) {
        return Status::Error(where + "position " + std::to_string(t.pos) + " exceeds the sequence context " +
                             std::to_string(forward_->max_ctx(t.seq)));
      }
      if (t.token < 0 || t.token >= model_->config().vocab) {
        return Status::Error(where + "token id " + std::to_string(t.token) + " is outside the vocabulary");
      }
      next[t.seq] = t.pos + 1;
    }
    return Status::Ok();
  }

  // Like the CPU backend: known sequences, token ids in the vocabulary, an input
  // state for every token, positions inside the context and consecutive per sequence
  // within the batch (they need not continue the main sequence).
  Status validate_mtp(std::span<const MtpToken> batch) const {
    if (static_cast<int32_t>(batch.size()) > options_.max_batch) {
      return Status::Error("CUDA backend: MTP batch of " + std::to_string(batch.size()) +
                           " tokens exceeds max_batch " + std::to_string(options_.max_batch));
    }
    std::vector<int32_t> next(lengths_.size(), -1);
    for (size_t i = 0; i < batch.size(); ++i) {
      const MtpToken& t = batch[i];
      const std::string where = "CUDA backend: MTP token " + std::to_string(i) + ": ";
      if (!forward_->valid(t.seq)) return Status::Error(where + "unknown sequence " + std::to_string(t.seq));
      if (t.hidden == nullptr) return Status::Error(where + "no input HC state");
      if (t.token < 0 || t.token >= model_->config().vocab) {
        return Status::Error(where + "token id " + std::to_string(t.token) + " is outside the vocabulary");
      }
      if (t.pos < 0) return Status::Error(where + "negative position " + std::to_string(t.pos));
      if (next[t.seq] >= 0 && t.pos != next[t.seq]) {
        return Status::Error(where + "position " + std::to_string(t.pos) + " of sequence " + std::to_string(t.seq) +
                             " does not continue it (expected " + std::to_string(next[t.seq]) + ")");
      }
      if (t.pos >= forward_->max_ctx(t.seq)) {
        return Status::Error(where + "position " + std::to_string(t.pos) + " exceeds the sequence context " +
                             std::to_string(forward_->max_ctx(t.seq)));
      }
      next[t.seq] = t.pos + 1;
    }
    return Status::Ok();
  }

  std::unique_ptr<DeviceModel> model_;
  std::unique_ptr<CudaForward> forward_;
  BackendOptions options_;
  std::vector<int32_t> lengths_;
};

}  // namespace

bool cuda_device_present() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return false;
  return count > 0;
}

Result<std::unique_ptr<Backend>> make_cuda_backend(const Model& model,
                                                   const BackendOptions& options) {
  if (!cuda_device_present()) {
    return Status::Error("CUDA backend: no CUDA device is present");
  }
  DS4_CUDA_TRY(cudaSetDevice(options.device));
  UploadStats stats;
  Result<std::unique_ptr<DeviceModel>> dm = upload_model(model, 8, &stats);
  if (!dm.ok()) return dm.status();
  std::fprintf(stderr, "ds4: CUDA: %.2f GiB of weights uploaded in %.2f s (%.2f GiB/s)\n",
               stats.bytes / (1024.0 * 1024.0 * 1024.0), stats.seconds, stats.gib_per_s());
  return make_cuda_backend_from_device(std::move(dm.value()), options);
}

Result<std::unique_ptr<Backend>> make_cuda_backend_from_device(std::unique_ptr<DeviceModel> model,
                                                               const BackendOptions& options) {
  Result<std::unique_ptr<CudaForward>> fw = CudaForward::Create(*model, options.qat);
  if (!fw.ok()) return fw.status();
  std::unique_ptr<Backend> backend(new CudaBackend(std::move(model), std::move(fw.value()), options));
  return std::move(backend);
}

}  // namespace ds4
