#include "cpu/cpu_backend.h"

#include <algorithm>
#include <map>
#include <string>

#include "cpu/forward_pass.h"
#include "cpu/rope.h"
#include "cpu/sequence_state.h"
#include "cpu/weight_cache.h"
#include "model/model.h"
#include "runtime/thread_pool.h"

namespace ds4::cpu {

struct CpuBackend::Impl {
  Impl(const Model& m, const BackendOptions& o)
      : model(m), options(o), pool(o.threads), rope_plain(m.config(), false), rope_yarn(m.config(), true) {
    cache.build({&m.gguf(), m.mtp_gguf()}, pool);
    ratios = m.config().compress_ratios;
    if (m.has_mtp()) ratios.push_back(m.config().mtp_compress_ratio);
  }

  const Model& model;
  BackendOptions options;
  ThreadPool pool;
  Rope rope_plain;
  Rope rope_yarn;
  WeightCache cache;
  std::vector<int32_t> ratios;  // per state entry: main blocks, then the MTP block
  CpuTrace trace;
  std::vector<SequenceState> sequences;

  SequenceState* find(SeqId seq) {
    if (seq < 0 || seq >= static_cast<SeqId>(sequences.size()) || !sequences[seq].in_use) return nullptr;
    return &sequences[seq];
  }
};

CpuBackend::CpuBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CpuBackend::~CpuBackend() = default;

Result<std::unique_ptr<CpuBackend>> CpuBackend::Create(const Model& model, const BackendOptions& options) {
  if (options.max_batch <= 0) {
    return Status::Error("cpu backend: max_batch must be positive, is " + std::to_string(options.max_batch));
  }
  return std::unique_ptr<CpuBackend>(new CpuBackend(std::make_unique<Impl>(model, options)));
}

Result<SeqId> CpuBackend::new_sequence(int32_t max_ctx) {
  if (max_ctx <= 0) return Status::Error("cpu backend: max_ctx must be positive, is " + std::to_string(max_ctx));
  auto& seqs = impl_->sequences;
  SeqId id = 0;
  while (id < static_cast<SeqId>(seqs.size()) && seqs[id].in_use) ++id;
  if (id == static_cast<SeqId>(seqs.size())) seqs.emplace_back();
  seqs[id].init(impl_->model.config(), impl_->ratios, max_ctx, kMaxRollback);
  return id;
}

void CpuBackend::free_sequence(SeqId seq) {
  SequenceState* s = impl_->find(seq);
  if (s != nullptr) *s = SequenceState{};
}

int32_t CpuBackend::sequence_length(SeqId seq) const {
  SequenceState* s = impl_->find(seq);
  return s == nullptr ? 0 : s->length;
}

Status CpuBackend::truncate(SeqId seq, int32_t n) {
  SequenceState* s = impl_->find(seq);
  if (s == nullptr) return Status::Error("cpu backend: truncate: unknown sequence " + std::to_string(seq));
  if (n < 0 || n > s->length) {
    return Status::Error("cpu backend: truncate sequence " + std::to_string(seq) + " to " + std::to_string(n) +
                         " tokens: it holds " + std::to_string(s->length));
  }
  if (n != 0 && n < s->length - kMaxRollback) {
    return Status::Error("cpu backend: truncate sequence " + std::to_string(seq) + " from " +
                         std::to_string(s->length) + " to " + std::to_string(n) + " tokens: at most " +
                         std::to_string(kMaxRollback) + " tokens can be rolled back (or truncate to 0)");
  }
  s->length = n;
  for (LayerState& layer : s->layers) layer.forget_from(n);
  return Status::Ok();
}

namespace {

// Checks sequences, token ids and positions of a batch and groups it by sequence,
// touching no state. `continues`: each sequence's first token must sit at its
// length (main model); otherwise positions need only be consecutive (MTP block).
template <typename Impl>
Status plan_batch(Impl& impl, std::span<const BatchToken> batch, bool continues, std::vector<SequenceSlice>* slices) {
  const ModelConfig& c = impl.model.config();
  std::map<SeqId, size_t> slice_of;
  for (size_t i = 0; i < batch.size(); ++i) {
    const BatchToken& t = batch[i];
    SequenceState* s = impl.find(t.seq);
    const std::string where = "cpu backend: batch token " + std::to_string(i);
    if (s == nullptr) return Status::Error(where + ": unknown sequence " + std::to_string(t.seq));
    if (t.token < 0 || t.token >= c.vocab) {
      return Status::Error(where + ": token id " + std::to_string(t.token) + " is outside the vocabulary [0, " +
                           std::to_string(c.vocab) + ")");
    }
    auto it = slice_of.find(t.seq);
    if (it == slice_of.end()) {
      if (!continues && t.pos < 0) return Status::Error(where + ": negative position " + std::to_string(t.pos));
      it = slice_of.emplace(t.seq, slices->size()).first;
      slices->push_back(SequenceSlice{s, continues ? s->length : t.pos, {}});
    }
    SequenceSlice& slice = (*slices)[it->second];
    const int32_t expected = slice.start + static_cast<int32_t>(slice.tokens.size());
    if (t.pos != expected) {
      return Status::Error(where + ": position " + std::to_string(t.pos) + " of sequence " + std::to_string(t.seq) +
                           " does not continue it (expected " + std::to_string(expected) + ")");
    }
    if (t.pos >= s->max_ctx) {
      return Status::Error(where + ": position " + std::to_string(t.pos) + " exceeds the context of sequence " +
                           std::to_string(t.seq) + " (" + std::to_string(s->max_ctx) + " tokens)");
    }
    slice.tokens.push_back(static_cast<int32_t>(i));
  }
  return Status::Ok();
}

}  // namespace

Status CpuBackend::forward(std::span<const BatchToken> batch, ForwardOutput* out) {
  out->logits.clear();
  out->hidden.clear();
  if (batch.empty()) return Status::Ok();
  if (static_cast<int64_t>(batch.size()) > impl_->options.max_batch) {
    return Status::Error("cpu backend: batch of " + std::to_string(batch.size()) + " tokens exceeds max_batch " +
                         std::to_string(impl_->options.max_batch));
  }
  std::vector<SequenceSlice> slices;
  DS4_RETURN_IF_ERROR(plan_batch(*impl_, batch, /*continues=*/true, &slices));
  ForwardContext ctx{impl_->model, impl_->pool,      impl_->options.qat, &impl_->trace,
                     impl_->rope_plain, impl_->rope_yarn, impl_->cache};
  run_forward(ctx, batch, slices, out);
  for (SequenceSlice& slice : slices) slice.state->length = slice.start + static_cast<int32_t>(slice.tokens.size());
  return Status::Ok();
}

bool CpuBackend::has_mtp() const { return impl_->model.has_mtp() && impl_->ratios.size() > static_cast<size_t>(impl_->model.n_layers()); }

Status CpuBackend::forward_mtp(std::span<const MtpToken> batch, ForwardOutput* out) {
  out->logits.clear();
  out->hidden.clear();
  if (!has_mtp()) {
    return Status::Error("cpu backend: no MTP block (load the MTP file with Model::load_mtp before creating the backend)");
  }
  if (batch.empty()) return Status::Ok();
  if (static_cast<int64_t>(batch.size()) > impl_->options.max_batch) {
    return Status::Error("cpu backend: MTP batch of " + std::to_string(batch.size()) + " tokens exceeds max_batch " +
                         std::to_string(impl_->options.max_batch));
  }
  std::vector<BatchToken> tokens(batch.size());
  std::vector<const float*> hidden(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].hidden == nullptr) {
      return Status::Error("cpu backend: MTP token " + std::to_string(i) + " has no input HC state");
    }
    tokens[i] = BatchToken{batch[i].token, batch[i].seq, batch[i].pos, batch[i].want_logits, batch[i].want_hidden};
    hidden[i] = batch[i].hidden;
  }
  std::vector<SequenceSlice> slices;
  DS4_RETURN_IF_ERROR(plan_batch(*impl_, tokens, /*continues=*/false, &slices));
  ForwardContext ctx{impl_->model, impl_->pool,      impl_->options.qat, &impl_->trace,
                     impl_->rope_plain, impl_->rope_yarn, impl_->cache};
  run_mtp(ctx, tokens, hidden, slices, out);
  return Status::Ok();
}

void CpuBackend::set_trace(CpuTrace trace) { impl_->trace = std::move(trace); }

int CpuBackend::threads() const { return impl_->pool.size(); }

}  // namespace ds4::cpu
