#include "cuda/forward.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "cuda/attention.h"
#include "cuda/compressor_indexer.h"
#include "cuda/cuda_check.h"
#include "cuda/dense_matvec.h"
#include "cuda/device_sequence.h"
#include "cuda/expert_matvec.h"
#include "cuda/routed_experts.h"
#include "cuda/prefill_workspace.h"
#include "cuda/hyper_connections.h"
#include "cuda/launch.h"
#include "cuda/matmul.h"
#include "cuda/matvec.h"
#include "cuda/moe.h"
#include "cuda/l2_prefetch.h"
#include "cuda/mtp.h"
#include "cuda/row_ops.h"
#include "cuda/sampling.h"

namespace ds4 {

struct CudaForward::Workspace {
  void* arena = nullptr;
  float *x = nullptr, *xb = nullptr, *mix = nullptr, *post = nullptr, *comb = nullptr;
  float *n = nullptr, *a = nullptr, *qf = nullptr, *kv = nullptr, *heads = nullptr, *u = nullptr;
  float *out = nullptr, *ck = nullptr, *ick = nullptr, *iq = nullptr, *iw = nullptr;
  float *router = nullptr, *route_w = nullptr, *h = nullptr, *hs = nullptr, *moe = nullptr;
  float* moe_shared = nullptr;  // the shared expert's output where hc_post adds it (kBranches)
  float *head = nullptr, *logits = nullptr;
  int32_t *route_ids = nullptr, *selected = nullptr, *index_active = nullptr, *argmax = nullptr;
  float* split = nullptr;  // matvec split-row partial sums (main stream)
  // The same for launches on the side streams (one each: the branches run at once).
  float *split_side = nullptr, *split_kv = nullptr, *split_index = nullptr;
  float* attention = nullptr;  // attention split partials
  // MTP input step: the drafted-from HC state, the embedding row, its norm, e_proj of
  // it, and the per-stream norms of the state.
  float *mtp_in = nullptr, *mtp_emb = nullptr, *mtp_en = nullptr, *mtp_ep = nullptr, *mtp_hn = nullptr;
  ~Workspace() {
    if (arena) cudaFree(arena);
  }
};

namespace {

constexpr int64_t kSplitFloats = 32 * 8192;
constexpr int kAttentionMaxSplits = 16;

__global__ void advance_kernel(int32_t* step, const int32_t* next_token) {
  pdl_wait();  // PDL: reads the argmax, writes the step block
  step[0] = *next_token;
  step[1] += 1;
}

// After recording a graph failed with programmatic dependent launch on: turns PDL off
// for the process (cuda/launch.h), says so on stderr and returns true (the caller
// records again, plainly). False when PDL was already off.
bool fall_back_to_plain_launches(const Status& failed, const char* graph) {
  if (!pdl_enabled()) return false;
  std::fprintf(stderr, "ds4: recording the %s graph with programmatic dependent launch failed (%s); "
               "recording it with plain launches and leaving PDL off\n", graph, failed.message().c_str());
  set_pdl_enabled(false);
  (void)cudaGetLastError();
  return true;
}

// DS4_CUDA_L2_PREFETCH: a comma list of q_b, out_a, out_b, gate_up, down, or "all" /
// "none"; unknown items are named on stderr and ignored. Unset: the default plan.
CudaForward::L2Prefetch l2_prefetch_from_environment() {
  CudaForward::L2Prefetch plan;
  const char* v = std::getenv("DS4_CUDA_L2_PREFETCH");
  if (v == nullptr) return plan;
  plan = {};
  std::string text(v);
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    if (item == "all") {
      plan = {true, true, true, true, true};
    } else if (item == "none" || item.empty()) {
    } else if (item == "q_b") {
      plan.q_b = true;
    } else if (item == "out_a") {
      plan.out_a = true;
    } else if (item == "out_b") {
      plan.out_b = true;
    } else if (item == "gate_up") {
      plan.gate_up = true;
    } else if (item == "down") {
      plan.down = true;
    } else {
      std::fprintf(stderr, "ds4: DS4_CUDA_L2_PREFETCH: unknown item '%s' ignored (q_b, out_a, out_b, gate_up, down, all, none)\n",
                   item.c_str());
    }
    at = comma + 1;
  }
  return plan;
}

// DS4_CUDA_DECODE_SCHEDULE: branches, shared_first, moe_serial or serial; anything else is
// named on stderr and the default kept.
CudaForward::DecodeSchedule decode_schedule_from_environment() {
  using S = CudaForward::DecodeSchedule;
  const S fallback = S::kBranches;
  const char* v = std::getenv("DS4_CUDA_DECODE_SCHEDULE");
  if (v == nullptr) return fallback;
  const std::string text(v);
  if (text == "branches") return S::kBranches;
  if (text == "shared_first") return S::kSharedFirst;
  if (text == "moe_serial") return S::kMoeSerial;
  if (text == "serial") return S::kSerial;
  std::fprintf(stderr, "ds4: DS4_CUDA_DECODE_SCHEDULE: unknown value '%s' ignored (branches, shared_first, moe_serial, serial)\n",
               text.c_str());
  return fallback;
}

// Whether the environment variable `name` is "1" (DS4_CUDA_ROUTER_FOLD).
bool env_is_one(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == "1";
}

}  // namespace

Result<std::unique_ptr<CudaForward>> CudaForward::Create(const DeviceModel& model, bool qat) {
  std::unique_ptr<CudaForward> f(new CudaForward(model, qat));
  DS4_RETURN_IF_ERROR(f->init());
  return std::move(f);
}

CudaForward::CudaForward(const DeviceModel& model, bool qat)
    : model_(model),
      qat_(qat),
      l2_prefetch_(l2_prefetch_from_environment()),
      schedule_(decode_schedule_from_environment()),
      router_fold_(env_is_one("DS4_CUDA_ROUTER_FOLD")) {}

CudaForward::~CudaForward() {
  seqs_.clear();
  ws_.reset();
  for (cudaEvent_t e : {ev_fork_, ev_latent_, ev_join_, ev_join_kv_, ev_join_index_, ev_prefetch_, ev_join_comb_}) {
    if (e) cudaEventDestroy(e);
  }
  for (cudaStream_t s : {side_, side_kv_, side_index_, side_prefetch_, side_comb_}) {
    if (s) cudaStreamDestroy(s);
  }
  if (stream_) cudaStreamDestroy(stream_);
}

Status CudaForward::init() {
  DS4_RETURN_IF_ERROR(matvec_init());
  DS4_RETURN_IF_ERROR(expert_matvec_init());
  DS4_RETURN_IF_ERROR(attention_init());
  DS4_RETURN_IF_ERROR(indexer_init());
  DS4_RETURN_IF_ERROR(matmul_init());
  DS4_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  for (cudaStream_t* s : {&side_, &side_kv_, &side_index_, &side_prefetch_, &side_comb_}) {
    DS4_CUDA_TRY(cudaStreamCreateWithFlags(s, cudaStreamNonBlocking));
  }
  for (cudaEvent_t* e : {&ev_fork_, &ev_latent_, &ev_join_, &ev_join_kv_, &ev_join_index_, &ev_prefetch_, &ev_join_comb_}) {
    DS4_CUDA_TRY(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  }
  const ModelConfig& c = model_.config();
  ws_ = std::make_unique<Workspace>();
  Workspace& w = *ws_;
  Carver k;
  const int64_t hd = c.hc_dim();
  const int64_t qdim = static_cast<int64_t>(c.n_heads) * c.head_dim;
  const int64_t comp_w = 2 * static_cast<int64_t>(std::max(c.head_dim, c.index_head_dim));
  k.take(&w.x, hd);
  k.take(&w.xb, hd);
  k.take(&w.mix, c.hc_mix());
  k.take(&w.post, c.hc_mult);
  k.take(&w.comb, c.hc_mult * c.hc_mult);
  k.take(&w.n, c.dim);
  k.take(&w.a, c.q_lora);
  k.take(&w.qf, qdim);
  k.take(&w.kv, c.head_dim);
  k.take(&w.heads, qdim);
  k.take(&w.u, static_cast<int64_t>(c.out_groups) * c.out_lora);
  k.take(&w.out, c.dim);
  k.take(&w.ck, 2 * comp_w);   // k then z of the attention compressor
  k.take(&w.ick, 2 * comp_w);  // k then z of the indexer's compressor
  k.take(&w.iq, static_cast<int64_t>(c.index_heads) * c.index_head_dim);
  k.take(&w.iw, c.index_heads);
  k.take(&w.router, c.n_experts);
  k.take(&w.route_w, c.n_experts_used);
  k.take(&w.route_ids, c.n_experts_used);
  k.take(&w.h, static_cast<int64_t>(c.n_experts_used) * c.expert_ffn);
  k.take(&w.moe_shared, c.dim);
  k.take(&w.hs, c.expert_ffn);
  k.take(&w.moe, c.dim);
  k.take(&w.head, c.dim);
  k.take(&w.logits, c.vocab);
  k.take(&w.selected, std::max(1, c.index_topk));
  k.take(&w.index_active, 1);
  k.take(&w.argmax, 1);
  k.take(&w.split, kSplitFloats);
  k.take(&w.split_side, kSplitFloats);
  k.take(&w.split_kv, kSplitFloats);
  k.take(&w.split_index, kSplitFloats);
  k.take(&w.attention, attention_workspace_floats(c.n_heads, kAttentionMaxSplits, c.head_dim));
  if (model_.has_mtp()) {
    k.take(&w.mtp_in, hd);
    k.take(&w.mtp_emb, c.dim);
    k.take(&w.mtp_en, c.dim);
    k.take(&w.mtp_ep, c.dim);
    k.take(&w.mtp_hn, hd);
  }
  return k.allocate(&w.arena, "allocating the forward workspace");
}

Result<int> CudaForward::new_sequence(int32_t max_ctx) {
  if (max_ctx <= 0) return Status::Error("CUDA backend: sequence context must be positive");
  const ModelConfig& c = model_.config();
  auto seq = std::make_unique<DeviceSequence>();
  seq->max_ctx = max_ctx;
  seq->ring = c.window + kRollback;
  // With an MTP block, one more layer (ratio 0: its raw window only) and its tags.
  const int n_blocks = c.n_layers + (model_.has_mtp() ? 1 : 0);
  seq->layers.resize(n_blocks);
  Carver k;
  k.take(&seq->step, 2);
  k.take(&seq->raw, static_cast<int64_t>(n_blocks) * seq->ring * c.head_dim);
  if (model_.has_mtp()) {
    k.take(&seq->mtp_tags, seq->ring);
    seq->layers[c.n_layers].max_visible = c.window;
  }
  k.take(&seq->scores, max_ctx / 4 + 1);
  for (int l = 0; l < c.n_layers; ++l) {
    const int r = c.ratio(l);
    DeviceSequence::Layer& L = seq->layers[l];
    L.max_visible = c.window;
    if (r == 0) continue;
    const int coff = ModelConfig::compressor_coff(r);
    L.comp_max = max_ctx / r + 1;
    L.comp_slots = coff * r + kRollback;
    k.take(&L.comp_rows, L.comp_max * c.head_dim);
    k.take(&L.comp_k, static_cast<int64_t>(L.comp_slots) * coff * c.head_dim);
    k.take(&L.comp_z, static_cast<int64_t>(L.comp_slots) * coff * c.head_dim);
    L.max_visible += r == 4 ? static_cast<int>(std::min<int64_t>(c.index_topk, L.comp_max))
                            : static_cast<int>(L.comp_max);
    if (r == 4) {
      L.index_slots = 2 * 4 + kRollback;
      k.take(&L.index_rows, L.comp_max * c.index_head_dim);
      k.take(&L.index_k, static_cast<int64_t>(L.index_slots) * 2 * c.index_head_dim);
      k.take(&L.index_z, static_cast<int64_t>(L.index_slots) * 2 * c.index_head_dim);
    }
  }
  DS4_RETURN_IF_ERROR(k.allocate(&seq->arena, "allocating sequence state"));
  if (seq->mtp_tags) {
    seq->layers[c.n_layers].raw_tags = seq->mtp_tags;
    // After the arena's zero fill (issued on the legacy stream), all tags -1.
    DS4_CUDA_TRY(cudaDeviceSynchronize());
    DS4_CUDA_TRY(cudaMemsetAsync(seq->mtp_tags, 0xff, sizeof(int32_t) * seq->ring, stream_));
  }
  for (size_t i = 0; i < seqs_.size(); ++i) {
    if (!seqs_[i]) {
      seqs_[i] = std::move(seq);
      return static_cast<int>(i);
    }
  }
  seqs_.push_back(std::move(seq));
  return static_cast<int>(seqs_.size() - 1);
}

void CudaForward::free_sequence(int id) {
  if (valid(id)) seqs_[id].reset();
}

bool CudaForward::valid(int id) const {
  return id >= 0 && id < static_cast<int>(seqs_.size()) && seqs_[id] != nullptr;
}

int32_t CudaForward::max_ctx(int id) const { return valid(id) ? seqs_[id]->max_ctx : 0; }

// k = kv . n and z = gate . n into out[0..w) and out[w..2w): one launch when the
// planner placed the gate rows right after the kv rows (same type and width), else two.
static Status project_compressor(const DeviceCompressor& c, const float* n, float* out, float* split,
                                 int64_t split_floats, cudaStream_t st) {
  const DeviceMatrix& kv = c.kv;
  const DeviceMatrix& gate = c.gate;
  MatvecLaunch ml;
  ml.x = n;
  ml.split_workspace = split;
  ml.split_workspace_floats = split_floats;
  if (gate.type == kv.type && gate.cols == kv.cols && gate.rows == kv.rows && kv.scales == nullptr &&
      gate.data == kv.data + kv.data_bytes()) {
    DeviceMatrix both = kv;
    both.rows = 2 * kv.rows;
    ml.w = &both;
    ml.y = out;
    return launch_dense_or_matvec(ml, st);
  }
  ml.w = &kv;
  ml.y = out;
  DS4_RETURN_IF_ERROR(launch_dense_or_matvec(ml, st));
  ml.w = &gate;
  ml.y = out + kv.rows;
  return launch_dense_or_matvec(ml, st);
}

// x_out = hc_post(x_in, f) with the current post / comb (cuda/hyper_connections.h). With
// `next_mix` (the mixing projection the next hc_pre or hc_head applies to x_out), one
// fused launch also leaves that projection's column-tile partial sums in w.split and
// records their count in pending_mix_tiles_ for that consumer (the same bits as the
// separate launches); falls back to hc_post alone where the fused form does not apply.
Status CudaForward::hc_post(const float* x_in, const float* f, float* x_out, const DeviceMatrix* next_mix,
                            cudaStream_t st, const float* f_add) {
  const ModelConfig& c = model_.config();
  Workspace& w = *ws_;
  const HcShape hc = hc_shape(c);
  pending_mix_tiles_ = 0;
  if (fused_hc_ && next_mix) {
    HcPostMixLaunch pm;
    pm.x_in = x_in;
    pm.f = f;
    pm.f_add = f_add;
    pm.post = w.post;
    pm.comb = w.comb;
    pm.shape = hc;
    pm.x_out = x_out;
    pm.mix_fn = next_mix;
    pm.mix_partial = w.split;
    pm.mix_partial_floats = kSplitFloats;
    if (Result<int> tiles = hc_post_mix_tiles(pm); tiles.ok()) {
      DS4_RETURN_IF_ERROR(launch_hc_post_mix(pm, st));
      pending_mix_tiles_ = *tiles;
      return Status::Ok();
    }
  }
  return launch_hc_post(x_in, f, w.post, w.comb, hc, x_out, st, f_add);
}

// The output HC head (spec/MODEL.md §2.10) of the state in w.x into w.head: from the
// partial sums hc_post left (pending_mix_tiles_), else the mixing projection first.
Status CudaForward::hc_head(const DeviceMatrix& fn, const float* scale, const float* base, const float* norm,
                            cudaStream_t st) {
  const ModelConfig& c = model_.config();
  Workspace& w = *ws_;
  const HcShape hc = hc_shape(c);
  if (const int tiles = std::exchange(pending_mix_tiles_, 0); tiles > 0) {
    return launch_hc_head_partials(w.x, w.split, tiles, scale, base, norm, hc, w.head, st);
  }
  MatvecLaunch hm;
  hm.w = &fn;
  hm.x = w.x;
  hm.y = w.mix;
  hm.split_workspace = w.split;
  hm.split_workspace_floats = kSplitFloats;
  DS4_RETURN_IF_ERROR(launch_matvec(hm, st));
  return launch_hc_head(w.x, w.mix, scale, base, norm, hc, w.head, st);
}

// One layer of one token, in parallel branches joined by events, so the graph holds
// branches instead of one chain of small kernels. Attention sublayer: the main stream
// runs the q path; `side_kv_` the kv row; `side_` the attention compressor;
// `side_index_` the indexer (its compressor, weights, queries once the q latent exists,
// and the selection). MoE sublayer: `side_` runs the shared expert beside the router
// and the routed experts. Results are bit-identical to running everything in order:
// each buffer has one writer, and the shared expert's output is added to the routed sum
// by a single f32 addition (a + b == b + a).
Status CudaForward::enqueue_layer(DeviceSequence& seq, int l, const DeviceMatrix* next_mix) {
  const ModelConfig& c = model_.config();
  const DeviceLayer& L = model_.layer(l);
  const DeviceSequence::Layer& S = seq.layers[l];
  Workspace& w = *ws_;
  cudaStream_t st = stream_;
  // DecodeSchedule::kSerial: every launch on the main stream (one chain of
  // programmatic dependent launches, no joins), the Sinkhorn inside hc_pre.
  const bool serial = schedule_ == DecodeSchedule::kSerial;
  cudaStream_t side = serial ? st : side_;
  cudaStream_t side_kv = serial ? st : side_kv_;
  cudaStream_t side_index = serial ? st : side_index_;
  // The Sinkhorn's own branch (kBranches, kSharedFirst), or the shared expert's head
  // (kMoeSerial); kSerial runs it inside hc_pre.
  const bool comb_apart = schedule_ == DecodeSchedule::kBranches || schedule_ == DecodeSchedule::kSharedFirst;
  const int32_t* pos = seq.step + 1;
  const int32_t* token = seq.step;
  const float* freqs = model_.rope_freqs(L.ratio != 0);
  const HcShape hc = hc_shape(c);
  auto mv = [&](const DeviceMatrix& m, const float* x, float* y, cudaStream_t s, float* split) {
    MatvecLaunch ml;
    ml.w = &m;
    ml.x = x;
    ml.y = y;
    ml.split_workspace = split;
    ml.split_workspace_floats = kSplitFloats;
    return launch_dense_or_matvec(ml, s);
  };
  // `to` continues after everything enqueued so far on `from`.
  auto join = [&](cudaStream_t from, cudaEvent_t e, cudaStream_t to) -> Status {
    if (from == to) return Status::Ok();
    DS4_CUDA_TRY(cudaEventRecord(e, from));
    DS4_CUDA_TRY(cudaStreamWaitEvent(to, e, 0));
    return Status::Ok();
  };

  // Asks weights into L2 on side_prefetch_, from this point of the main stream on.
  auto prefetch = [&](const L2PrefetchLaunch& pl) -> Status {
    if (!l2_prefetch_supported()) return Status::Ok();
    DS4_CUDA_TRY(cudaEventRecord(ev_prefetch_, st));
    DS4_CUDA_TRY(cudaStreamWaitEvent(side_prefetch_, ev_prefetch_, 0));
    prefetch_pending_ = true;
    return launch_l2_prefetch(pl, side_prefetch_);
  };
  if (l2_prefetch_.q_b) {
    L2PrefetchLaunch pl;
    pl.add_matrix(L.q_b);
    DS4_RETURN_IF_ERROR(prefetch(pl));
  }

  // The HC mixing projection leaves per-column-tile partial sums in w.split, and
  // hc_pre adds them itself (in the matvec's reduction order: the same bits, one
  // launch fewer on the critical path); falls back to the two-launch form. When the
  // hc_post before it already left those partials (pending_mix_tiles_), only hc_pre runs.
  // With four streams hc_pre leaves the Sinkhorn's input logits in w.comb and the
  // Sinkhorn runs on a side branch (finish_comb), off the critical path: w.comb is
  // first read by the hc_post after the sublayer, once the branches have joined.
  HcPreOptions pre_options;
  pre_options.comb_logits_only = hc.mult == 4 && !serial;
  auto finish_comb = [&](cudaStream_t s) -> Status {
    return pre_options.comb_logits_only ? launch_hc_sinkhorn(w.comb, hc, s) : Status::Ok();
  };
  auto hc_pre = [&](const DeviceMatrix& fn, const float* x, const float* scale, const float* base,
                    const float* norm) -> Status {
    if (const int tiles = std::exchange(pending_mix_tiles_, 0); tiles > 0) {
      return launch_hc_pre_partials(x, w.split, tiles, scale, base, norm, hc, w.post, w.comb, w.n, st,
                                    pre_options);
    }
    MatvecLaunch ml;
    ml.w = &fn;
    ml.x = x;
    ml.y = w.mix;
    ml.split_workspace = w.split;
    ml.split_workspace_floats = kSplitFloats;
    ml.tile_partials_only = true;
    Result<int> tiles = matvec_tile_columns(ml);
    if (!tiles.ok()) {
      DS4_RETURN_IF_ERROR(mv(fn, x, w.mix, st, w.split));
      return launch_hc_pre(x, w.mix, scale, base, norm, hc, w.post, w.comb, w.n, st, pre_options);
    }
    DS4_RETURN_IF_ERROR(launch_matvec(ml, st));
    return launch_hc_pre_partials(x, w.split, *tiles, scale, base, norm, hc, w.post, w.comb, w.n, st,
                                  pre_options);
  };

  // Attention sublayer.
  DS4_RETURN_IF_ERROR(hc_pre(L.hc_attn_fn, w.x, L.hc_attn_scale, L.hc_attn_base, L.attn_norm));
  stage("hc_pre attn");
  if (!serial) {
    DS4_CUDA_TRY(cudaEventRecord(ev_fork_, st));
    for (cudaStream_t s : {side_kv, side, side_index}) DS4_CUDA_TRY(cudaStreamWaitEvent(s, ev_fork_, 0));
    if (comb_apart) DS4_CUDA_TRY(cudaStreamWaitEvent(side_comb_, ev_fork_, 0));
  }
  // Branch: the Sinkhorn of this sublayer's comb (on its own branch, or first on this
  // one), then the kv row.
  DS4_RETURN_IF_ERROR(finish_comb(comb_apart ? side_comb_ : side_kv));
  DS4_RETURN_IF_ERROR(mv(L.kv, w.n, w.kv, side_kv, w.split_kv));
  RowPostLaunch kv;
  kv.in = w.kv;
  kv.in_stride = kv.out_stride = c.head_dim;
  kv.out = seq.raw + static_cast<int64_t>(l) * seq.ring * c.head_dim;
  kv.n_rows = 1;
  kv.d = c.head_dim;
  kv.norm = true;
  kv.eps = c.norm_eps;
  kv.rope_dim = c.rope_dim;
  kv.rope_freqs = freqs;
  kv.pos = pos;
  kv.norm_weight = L.kv_a_norm;
  kv.qat = qat_ ? RowQat::kFp8Nope : RowQat::kNone;
  kv.ring = seq.ring;
  DS4_RETURN_IF_ERROR(launch_row_post(kv, side_kv));
  // Branch: the attention compressor.
  CompressorLaunch cl;
  if (L.ratio != 0) {
    DS4_RETURN_IF_ERROR(project_compressor(L.compressor, w.n, w.ck, w.split_side, kSplitFloats, side));
    cl.k = w.ck;
    cl.z = w.ck + L.compressor.kv.rows;
    cl.ape = L.compressor.ape;
    cl.norm_weight = L.compressor.norm;
    cl.state_k = S.comp_k;
    cl.state_z = S.comp_z;
    cl.state_slots = S.comp_slots;
    cl.rows = S.comp_rows;
    cl.max_rows = S.comp_max;
    cl.ratio = L.ratio;
    cl.d = c.head_dim;
    cl.eps = c.norm_eps;
    cl.rope_dim = c.rope_dim;
    cl.rope_freqs = freqs;
    cl.qat = qat_ ? RowQat::kFp8Nope : RowQat::kNone;
    cl.pos = pos;
    DS4_RETURN_IF_ERROR(launch_compressor_update(cl, side));
    if (L.ratio == 4) {
      // Branch: the indexer's compressor (it writes the indexer's gate) and weights.
      DS4_RETURN_IF_ERROR(project_compressor(L.index_compressor, w.n, w.ick, w.split_index, kSplitFloats,
                                             side_index));
      CompressorLaunch il = cl;
      il.k = w.ick;
      il.z = w.ick + L.index_compressor.kv.rows;
      il.gate_flag = w.index_active;  // the indexer's gate, written by this launch
      il.gate_topk = c.index_topk;
      il.ape = L.index_compressor.ape;
      il.norm_weight = L.index_compressor.norm;
      il.state_k = S.index_k;
      il.state_z = S.index_z;
      il.state_slots = S.index_slots;
      il.rows = S.index_rows;
      il.d = c.index_head_dim;
      il.qat = qat_ ? RowQat::kHadamardFp4 : RowQat::kNone;
      DS4_RETURN_IF_ERROR(launch_compressor_update(il, side_index));
      MatvecLaunch iwm;
      iwm.w = &L.index_proj;
      iwm.x = w.n;
      iwm.y = w.iw;
      iwm.enable = w.index_active;
      iwm.split_workspace = w.split_index;
      iwm.split_workspace_floats = kSplitFloats;
      DS4_RETURN_IF_ERROR(launch_dense_or_matvec(iwm, side_index));
    }
  }
  // Main: the q path. w.a holds the q LoRA latent before its norm; every reader
  // normalises it on load.
  DS4_RETURN_IF_ERROR(mv(L.q_a, w.n, w.a, st, w.split));
  if (L.ratio == 4) {
    // The indexer's branch, once the latent exists: its queries and its selection.
    DS4_RETURN_IF_ERROR(join(st, ev_latent_, side_index));
    MatvecLaunch iqm;
    iqm.w = &L.index_q_b;
    iqm.x = w.a;
    iqm.y = w.iq;
    iqm.enable = w.index_active;
    iqm.x_norm_weight = L.q_a_norm;
    iqm.x_norm_eps = c.norm_eps;
    DS4_RETURN_IF_ERROR(launch_dense_or_matvec(iqm, side_index));
    RowPostLaunch iq;
    iq.in = iq.out = w.iq;
    iq.in_stride = iq.out_stride = c.index_head_dim;
    iq.n_rows = c.index_heads;
    iq.d = c.index_head_dim;
    iq.rope_dim = c.rope_dim;
    iq.rope_freqs = freqs;
    iq.pos = pos;
    iq.qat = qat_ ? RowQat::kHadamardFp4 : RowQat::kNone;
    DS4_RETURN_IF_ERROR(launch_row_post(iq, side_index));
    IndexerLaunch ix;
    ix.q = w.iq;
    ix.weights = w.iw;
    ix.rows = S.index_rows;
    ix.max_rows = S.comp_max;
    ix.heads = c.index_heads;
    ix.head_dim = c.index_head_dim;
    ix.ratio = 4;
    ix.topk = c.index_topk;
    ix.pos = pos;
    ix.active = w.index_active;
    ix.scores = seq.scores;
    ix.selected = w.selected;
    DS4_RETURN_IF_ERROR(launch_indexer_select(ix, side_index));
  }
  MatvecLaunch qb;
  qb.w = &L.q_b;
  qb.x = w.a;
  qb.y = w.qf;
  qb.x_norm_weight = L.q_a_norm;
  qb.x_norm_eps = c.norm_eps;
  DS4_RETURN_IF_ERROR(launch_dense_or_matvec(qb, st));
  if (l2_prefetch_.out_a || l2_prefetch_.out_b) {
    L2PrefetchLaunch pl;
    if (l2_prefetch_.out_a) pl.add_matrix(L.out_a);
    if (l2_prefetch_.out_b) pl.add_matrix(L.out_b);
    DS4_RETURN_IF_ERROR(prefetch(pl));
  }
  AttentionLaunch at;
  at.q = w.qf;
  at.out = w.heads;
  at.raw = seq.raw + static_cast<int64_t>(l) * seq.ring * c.head_dim;
  at.ring = seq.ring;
  at.raw_tags = S.raw_tags;
  at.window = c.window;
  at.comp = S.comp_rows;
  at.max_comp_rows = S.comp_max;
  at.ratio = L.ratio;
  at.topk = c.index_topk;
  at.selected = w.selected;
  at.active = w.index_active;
  at.sinks = L.sinks;
  at.heads = c.n_heads;
  at.head_dim = c.head_dim;
  at.rope_dim = c.rope_dim;
  at.rope_freqs = freqs;
  at.pos = pos;
  at.max_visible = S.max_visible;
  // The split and head grouping for this context (cuda/attention.h): the staged kernel
  // (every row of a split copied into shared memory at once) where its rows fit.
  const AttentionPlan plan = attention_decode_plan(c.n_heads, c.head_dim, S.max_visible, L.ratio, kAttentionMaxSplits);
  at.splits = plan.splits;
  at.head_group = plan.head_group;
  at.staged = plan.staged;
  at.workspace = w.attention;
  // The q row post (per-head RMSNorm without weight, RoPE of the tail; w.qf has no other
  // reader) and the split combine run inside the attention kernel, with only the splits
  // that hold rows; else the q row post is its own launch, and the combine too.
  at.q_norm_rope = at.fold_combine = at.fit_splits = attention_fusion_enabled();
  at.q_norm_eps = c.norm_eps;
  if (!at.q_norm_rope || !attention_folds_q_post(at)) {
    at.q_norm_rope = at.fold_combine = at.fit_splits = false;
    RowPostLaunch q;
    q.in = q.out = w.qf;
    q.in_stride = q.out_stride = c.head_dim;
    q.n_rows = c.n_heads;
    q.d = c.head_dim;
    q.norm = true;
    q.eps = c.norm_eps;
    q.rope_dim = c.rope_dim;
    q.rope_freqs = freqs;
    q.pos = pos;
    DS4_RETURN_IF_ERROR(launch_row_post(q, st));
  }
  stage("q path");
  DS4_RETURN_IF_ERROR(join(side_kv, ev_join_kv_, st));
  DS4_RETURN_IF_ERROR(join(side, ev_join_, st));
  DS4_RETURN_IF_ERROR(join(side_index, ev_join_index_, st));
  if (comb_apart) DS4_RETURN_IF_ERROR(join(side_comb_, ev_join_comb_, st));
  stage("kv, compressors, indexer (joined)");

  DS4_RETURN_IF_ERROR(launch_attention_decode(at, st));
  stage("attention");
  MatvecLaunch oa;
  oa.w = &L.out_a;
  oa.x = w.heads;
  oa.x_slot_stride = static_cast<int64_t>(c.heads_per_group()) * c.head_dim;
  oa.y = w.u;
  oa.y_slot_stride = c.out_lora;
  oa.n_slots = c.out_groups;
  oa.n_rows = c.out_lora;
  oa.slot_row_stride = c.out_lora;
  DS4_RETURN_IF_ERROR(launch_dense_or_matvec(oa, st));
  DS4_RETURN_IF_ERROR(mv(L.out_b, w.u, w.out, st, w.split));
  DS4_RETURN_IF_ERROR(hc_post(w.x, w.out, w.xb, &L.hc_ffn_fn, st));
  stage("output proj + hc_post");

  // MoE sublayer.
  DS4_RETURN_IF_ERROR(hc_pre(L.hc_ffn_fn, w.xb, L.hc_ffn_scale, L.hc_ffn_base, L.ffn_norm));
  stage("hc_pre ffn");
  const float limit = L.swiglu_limit > 0 ? L.swiglu_limit : INFINITY;
  // The shared expert: gate+up into w.hs, then its down projection. kBranches stores it in
  // w.moe_shared and hc_post adds it to the routed sum (which the routed down stores in
  // w.moe), so neither waits for the other; the other schedules store it in w.moe and the
  // routed down adds to it. shared + routed == routed + shared: one f32 addition either
  // way, the same bits.
  const bool shared_apart = schedule_ == DecodeSchedule::kBranches;
  auto shared_gate_up = [&](cudaStream_t s) -> Status {
    MatvecLaunch sgu;
    sgu.w = &L.gate_shexp;
    sgu.w_up = &L.up_shexp;
    sgu.x = w.n;
    sgu.y = w.hs;
    sgu.swiglu_limit = limit;
    return launch_dense_or_matvec(sgu, s);
  };
  auto shared_down = [&](cudaStream_t s) -> Status {
    MatvecLaunch sd;
    sd.w = &L.down_shexp;
    sd.x = w.hs;
    sd.y = shared_apart ? w.moe_shared : w.moe;
    return launch_dense_or_matvec(sd, s);
  };
  // The Sinkhorn of this sublayer's comb on its own branch or first on the shared
  // expert's; the shared expert on a branch, or on the main stream after the router
  // (kMoeSerial, kSerial; see DecodeSchedule).
  DS4_RETURN_IF_ERROR(join(st, ev_fork_, side));
  if (comb_apart) {
    DS4_CUDA_TRY(cudaStreamWaitEvent(side_comb_, ev_fork_, 0));
    DS4_RETURN_IF_ERROR(finish_comb(side_comb_));
  } else {
    DS4_RETURN_IF_ERROR(finish_comb(side));
  }
  const bool shared_on_side = schedule_ == DecodeSchedule::kBranches || schedule_ == DecodeSchedule::kSharedFirst;
  if (shared_on_side) {
    DS4_RETURN_IF_ERROR(shared_gate_up(side));
    DS4_RETURN_IF_ERROR(shared_down(side));
  }
  // Main: router and routed experts.
  DS4_RETURN_IF_ERROR(mv(L.gate_inp, w.n, w.router, st, w.split));
  RouterLaunch rl;
  rl.logits = w.router;
  rl.n_experts = c.n_experts;
  rl.n_used = c.n_experts_used;
  rl.bias = L.hash ? nullptr : L.exp_probs_b;
  rl.tid2eid = L.hash ? L.tid2eid : nullptr;
  rl.token = token;
  rl.route_scale = c.route_scale;
  rl.route_norm = c.route_norm;
  rl.ids = w.route_ids;
  rl.weights = w.route_w;
  // Folded: the routed gate+up selects the experts itself (one launch fewer on the
  // critical path); the L2 prefetch of the chosen experts then has no ids to wait for.
  if (!router_fold_) DS4_RETURN_IF_ERROR(launch_router(rl, st));
  if (!router_fold_ && (l2_prefetch_.gate_up || l2_prefetch_.down)) {
    L2PrefetchLaunch pl;
    pl.ids = w.route_ids;
    pl.n_ids = c.n_experts_used;
    if (l2_prefetch_.gate_up) {
      pl.experts[pl.n_experts++] = &L.gate_exps;
      pl.experts[pl.n_experts++] = &L.up_exps;
    }
    if (l2_prefetch_.down) pl.experts[pl.n_experts++] = &L.down_exps;
    DS4_RETURN_IF_ERROR(prefetch(pl));
  }
  if (!shared_on_side) {
    DS4_RETURN_IF_ERROR(shared_gate_up(st));
    DS4_RETURN_IF_ERROR(shared_down(st));
  }
  stage("router");
  RoutedExpertsLaunch re;
  re.layer = &L;
  re.n_used = c.n_experts_used;
  re.swiglu_limit = limit;
  re.x = w.n;
  re.ids = w.route_ids;
  re.weights = w.route_w;
  re.h = w.h;
  re.y = w.moe;
  re.fast = expert_kernels_;
  if (router_fold_) re.route = &rl;
  DS4_RETURN_IF_ERROR(launch_routed_gate_up(re, st));
  stage("experts gate/up");
  if (shared_apart) {
    re.accumulate = false;  // the routed sum stored; hc_post adds the shared expert's
    DS4_RETURN_IF_ERROR(launch_routed_down(re, st));
    DS4_RETURN_IF_ERROR(join(side, ev_join_, st));
  } else {
    DS4_RETURN_IF_ERROR(join(side, ev_join_, st));
    DS4_RETURN_IF_ERROR(launch_routed_down(re, st));
  }
  if (comb_apart) DS4_RETURN_IF_ERROR(join(side_comb_, ev_join_comb_, st));
  stage("experts down (+ shared, joined)");
  DS4_RETURN_IF_ERROR(hc_post(w.xb, w.moe, w.x, next_mix, st, shared_apart ? w.moe_shared : nullptr));
  stage("hc_post ffn");
  return Status::Ok();
}

// The prefetch branch ends with the token or MTP step, joined to the main stream after
// its last launch (the prefetches themselves finished long before).
Status CudaForward::join_prefetch() {
  if (!std::exchange(prefetch_pending_, false)) return Status::Ok();
  DS4_CUDA_TRY(cudaEventRecord(ev_prefetch_, side_prefetch_));
  DS4_CUDA_TRY(cudaStreamWaitEvent(stream_, ev_prefetch_, 0));
  return Status::Ok();
}

void CudaForward::stage(const char* name) {
  if (!profile_) return;
  cudaEvent_t e;
  cudaEventCreate(&e);
  cudaEventRecord(e, stream_);
  profile_->push_back({name, e});
}

Status CudaForward::enqueue_token(DeviceSequence& seq, bool advance) {
  const ModelConfig& c = model_.config();
  Workspace& w = *ws_;
  const HcShape hc = hc_shape(c);
  DS4_RETURN_IF_ERROR(launch_hc_embed(model_.token_embd().data, model_.token_embd().type, seq.step,
                                      hc, w.x, stream_));
  stage("embed");
  pending_mix_tiles_ = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    const DeviceMatrix* next_mix = l + 1 < c.n_layers ? &model_.layer(l + 1).hc_attn_fn : &model_.output_hc_fn();
    DS4_RETURN_IF_ERROR(enqueue_layer(seq, l, next_mix));
  }
  DS4_RETURN_IF_ERROR(hc_head(model_.output_hc_fn(), model_.output_hc_scale(), model_.output_hc_base(),
                              model_.output_norm(), stream_));
  MatvecLaunch lm;
  lm.w = &model_.output();
  lm.x = w.head;
  lm.y = w.logits;
  DS4_RETURN_IF_ERROR(launch_dense_or_matvec(lm, stream_));
  DS4_RETURN_IF_ERROR(launch_argmax(w.logits, c.vocab, w.argmax, stream_));
  stage("head + argmax");
  if (advance) {
    DS4_CUDA_TRY(launch_kernel(advance_kernel, 1, 1, 0, stream_, seq.step, w.argmax));
  }
  return join_prefetch();
}

Status CudaForward::record(DeviceSequence& seq, bool advance) {
  const Status recorded = [&]() -> Status {
    cudaGraph_t graph = nullptr;
    DS4_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    Status s = enqueue_token(seq, advance);
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    DS4_RETURN_IF_ERROR(s);
    DS4_RETURN_IF_ERROR(cuda_status(end, "recording the decode graph"));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    DS4_RETURN_IF_ERROR(cuda_status(inst, "instantiating the decode graph"));
    (advance ? seq.graph_advance : seq.graph) = exec;
    return Status::Ok();
  }();
  if (!recorded.ok() && fall_back_to_plain_launches(recorded, "decode")) return record(seq, advance);
  return recorded;
}

Status CudaForward::set_step(int id, int32_t token, int32_t pos) {
  if (!valid(id)) return Status::Error("CUDA backend: unknown sequence " + std::to_string(id));
  DeviceSequence& seq = *seqs_[id];
  if (pos < 0 || pos >= seq.max_ctx) {
    return Status::Error("CUDA backend: position " + std::to_string(pos) + " is outside the sequence context of " +
                         std::to_string(seq.max_ctx));
  }
  if (token < 0 || token >= model_.config().vocab) {
    return Status::Error("CUDA backend: token id " + std::to_string(token) + " is outside the vocabulary");
  }
  const int32_t host[2] = {token, pos};
  DS4_CUDA_TRY(cudaMemcpyAsync(seq.step, host, sizeof(host), cudaMemcpyHostToDevice, stream_));
  return Status::Ok();
}

Status CudaForward::step(int id, int32_t token, int32_t pos, float* logits, float* hidden) {
  DS4_RETURN_IF_ERROR(set_step(id, token, pos));
  DeviceSequence& seq = *seqs_[id];
  if (!seq.graph) DS4_RETURN_IF_ERROR(record(seq, false));
  DS4_CUDA_TRY(cudaGraphLaunch(seq.graph, stream_));
  const ModelConfig& c = model_.config();
  if (logits) {
    DS4_CUDA_TRY(cudaMemcpyAsync(logits, ws_->logits, sizeof(float) * c.vocab, cudaMemcpyDeviceToHost,
                                 stream_));
  }
  if (hidden) {
    DS4_CUDA_TRY(cudaMemcpyAsync(hidden, ws_->x, sizeof(float) * c.hc_dim(), cudaMemcpyDeviceToHost,
                                 stream_));
  }
  // Without outputs the host runs ahead; the next step that returns data (or an
  // error raised by this one) synchronizes.
  if (logits || hidden) DS4_CUDA_TRY(cudaStreamSynchronize(stream_));
  return cuda_status(cudaGetLastError(), "decode step");
}

Status CudaForward::replay_greedy(int id, int n) {
  if (!valid(id)) return Status::Error("CUDA backend: unknown sequence " + std::to_string(id));
  DeviceSequence& seq = *seqs_[id];
  if (!seq.graph_advance) DS4_RETURN_IF_ERROR(record(seq, true));
  for (int i = 0; i < n; ++i) DS4_CUDA_TRY(cudaGraphLaunch(seq.graph_advance, stream_));
  DS4_CUDA_TRY(cudaStreamSynchronize(stream_));
  return Status::Ok();
}

namespace {

__global__ void fill_random_kernel(float* out, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t x = (seed + i) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    out[i] = scale * (static_cast<float>(x >> 40) / 16777216.0f - 0.5f);
  }
}

void fill_random(float* p, int64_t n, uint64_t seed, cudaStream_t st) {
  if (!p || n <= 0) return;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 4096);
  fill_random_kernel<<<static_cast<unsigned>(blocks), 256, 0, st>>>(p, n, seed, 2.0f);
}

}  // namespace

Status CudaForward::fill_context_random(int id, int32_t length, uint64_t seed) {
  if (!valid(id)) return Status::Error("CUDA backend: unknown sequence " + std::to_string(id));
  DeviceSequence& seq = *seqs_[id];
  if (length < 0 || length >= seq.max_ctx) return Status::Error("CUDA backend: fill length outside the context");
  const ModelConfig& c = model_.config();
  fill_random(seq.raw, static_cast<int64_t>(c.n_layers) * seq.ring * c.head_dim, seed, stream_);
  for (int l = 0; l < c.n_layers; ++l) {
    const DeviceSequence::Layer& L = seq.layers[l];
    const int r = c.ratio(l);
    if (r == 0) continue;
    const int coff = ModelConfig::compressor_coff(r);
    fill_random(L.comp_rows, std::min<int64_t>(L.comp_max, length / r + 1) * c.head_dim, seed + 1 + l, stream_);
    fill_random(L.comp_k, static_cast<int64_t>(L.comp_slots) * coff * c.head_dim, seed + 100 + l, stream_);
    fill_random(L.comp_z, static_cast<int64_t>(L.comp_slots) * coff * c.head_dim, seed + 200 + l, stream_);
    if (r == 4) {
      fill_random(L.index_rows, std::min<int64_t>(L.comp_max, length / 4 + 1) * c.index_head_dim, seed + 300 + l,
                  stream_);
      fill_random(L.index_k, static_cast<int64_t>(L.index_slots) * 2 * c.index_head_dim, seed + 400 + l, stream_);
      fill_random(L.index_z, static_cast<int64_t>(L.index_slots) * 2 * c.index_head_dim, seed + 500 + l, stream_);
    }
  }
  DS4_CUDA_TRY(cudaGetLastError());
  DS4_CUDA_TRY(cudaStreamSynchronize(stream_));
  return set_step(id, 0, length);
}

template <typename Body>
Result<std::vector<std::pair<std::string, double>>> CudaForward::profile(Body body) {
  std::vector<std::pair<const char*, cudaEvent_t>> marks;
  cudaEvent_t start;
  DS4_CUDA_TRY(cudaEventCreate(&start));
  cudaEventRecord(start, stream_);
  profile_ = &marks;
  Status s = body();
  profile_ = nullptr;
  DS4_CUDA_TRY(cudaStreamSynchronize(stream_));
  std::vector<std::pair<std::string, double>> out;
  cudaEvent_t prev = start;
  for (auto& m : marks) {
    float ms = 0;
    cudaEventElapsedTime(&ms, prev, m.second);
    auto it = std::find_if(out.begin(), out.end(), [&](const auto& o) { return o.first == m.first; });
    if (it == out.end()) out.push_back({m.first, ms}); else it->second += ms;
    prev = m.second;
  }
  cudaEventDestroy(start);
  for (auto& m : marks) cudaEventDestroy(m.second);
  DS4_RETURN_IF_ERROR(s);
  return out;
}

Result<std::vector<std::pair<std::string, double>>> CudaForward::profile_step(int id) {
  if (!valid(id)) return Status::Error("CUDA backend: unknown sequence " + std::to_string(id));
  return profile([&] { return enqueue_token(*seqs_[id], false); });
}

Result<std::vector<std::pair<std::string, double>>> CudaForward::profile_prefill(int id, const int32_t* tokens,
                                                                                 int n, int32_t pos0) {
  return profile([&] { return prefill(id, tokens, n, pos0, {}, nullptr, {}, nullptr); });
}

// The MTP step (spec/MODEL.md §2.11): X_h = e_proj . rmsw(embd[tok], enorm)
// + h_proj . rmsw(H_h, hnorm), the block as layer n_layers, then hc_head with the MTP
// weights and the main output head, and the greedy argmax.
Status CudaForward::enqueue_mtp(DeviceSequence& seq) {
  const ModelConfig& c = model_.config();
  const DeviceMtp& m = model_.mtp();
  Workspace& w = *ws_;
  cudaStream_t st = stream_;
  const HcShape one_stream{c.dim, 1, c.hc_sinkhorn_iters, c.hc_eps, c.norm_eps};
  DS4_RETURN_IF_ERROR(launch_mtp_mark_position(seq.mtp_tags, seq.ring, seq.step + 1, st));
  DS4_RETURN_IF_ERROR(launch_hc_embed(model_.token_embd().data, model_.token_embd().type, seq.step, one_stream,
                                      w.mtp_emb, st));
  DS4_RETURN_IF_ERROR(launch_rms_norm(w.mtp_emb, m.enorm, c.dim, c.norm_eps, w.mtp_en, st));
  MatvecLaunch ep;
  ep.w = &m.e_proj;
  ep.x = w.mtp_en;
  ep.y = w.mtp_ep;
  ep.split_workspace = w.split;
  ep.split_workspace_floats = kSplitFloats;
  DS4_RETURN_IF_ERROR(launch_dense_or_matvec(ep, st));
  for (int h = 0; h < c.hc_mult; ++h) {
    const int64_t off = static_cast<int64_t>(h) * c.dim;
    DS4_RETURN_IF_ERROR(launch_rms_norm(w.mtp_in + off, m.hnorm, c.dim, c.norm_eps, w.mtp_hn + off, st));
  }
  MatvecLaunch hp;  // one token per stream, straight into the block's input state
  hp.w = &m.h_proj;
  hp.x = w.mtp_hn;
  hp.x_tok_stride = c.dim;
  hp.y = w.x;
  hp.y_tok_stride = c.dim;
  hp.n_tokens = c.hc_mult;
  DS4_RETURN_IF_ERROR(launch_dense_or_matvec(hp, st));
  DS4_RETURN_IF_ERROR(launch_mtp_add_broadcast(w.x, w.mtp_ep, c.dim, c.hc_mult, st));
  stage("mtp input");
  pending_mix_tiles_ = 0;
  DS4_RETURN_IF_ERROR(enqueue_layer(seq, c.n_layers, &m.hc_head_fn));
  DS4_RETURN_IF_ERROR(hc_head(m.hc_head_fn, m.hc_head_scale, m.hc_head_base, m.norm, st));
  MatvecLaunch lm;
  lm.w = &model_.output();
  lm.x = w.head;
  lm.y = w.logits;
  DS4_RETURN_IF_ERROR(launch_dense_or_matvec(lm, st));
  DS4_RETURN_IF_ERROR(launch_argmax(w.logits, c.vocab, w.argmax, st));
  stage("mtp head + argmax");
  return join_prefetch();
}

Status CudaForward::record_mtp(DeviceSequence& seq) {
  const Status recorded = [&]() -> Status {
    cudaGraph_t graph = nullptr;
    DS4_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    Status s = enqueue_mtp(seq);
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    DS4_RETURN_IF_ERROR(s);
    DS4_RETURN_IF_ERROR(cuda_status(end, "recording the MTP graph"));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    DS4_RETURN_IF_ERROR(cuda_status(inst, "instantiating the MTP graph"));
    seq.graph_mtp = exec;
    return Status::Ok();
  }();
  if (!recorded.ok() && fall_back_to_plain_launches(recorded, "MTP")) return record_mtp(seq);
  return recorded;
}

Status CudaForward::mtp_step(int id, int32_t token, int32_t pos, const float* hidden, float* logits,
                             float* hidden_out) {
  if (!model_.has_mtp()) return Status::Error("CUDA backend: the model has no MTP block loaded");
  if (!hidden) return Status::Error("CUDA backend: MTP step without an input HC state");
  DS4_RETURN_IF_ERROR(set_step(id, token, pos));
  DeviceSequence& seq = *seqs_[id];
  const ModelConfig& c = model_.config();
  DS4_CUDA_TRY(cudaMemcpyAsync(ws_->mtp_in, hidden, sizeof(float) * c.hc_dim(), cudaMemcpyHostToDevice, stream_));
  if (!seq.graph_mtp) DS4_RETURN_IF_ERROR(record_mtp(seq));
  DS4_CUDA_TRY(cudaGraphLaunch(seq.graph_mtp, stream_));
  if (logits) {
    DS4_CUDA_TRY(cudaMemcpyAsync(logits, ws_->logits, sizeof(float) * c.vocab, cudaMemcpyDeviceToHost,
                                 stream_));
  }
  if (hidden_out) {
    DS4_CUDA_TRY(cudaMemcpyAsync(hidden_out, ws_->x, sizeof(float) * c.hc_dim(), cudaMemcpyDeviceToHost,
                                 stream_));
  }
  // The input copy above reads pageable host memory: it is staged before the call
  // returns, so the caller may reuse `hidden` at once; without outputs the host runs on.
  if (logits || hidden_out) DS4_CUDA_TRY(cudaStreamSynchronize(stream_));
  return cuda_status(cudaGetLastError(), "MTP step");
}

Status CudaForward::forget_mtp_from(int id, int32_t n) {
  if (!valid(id)) return Status::Error("CUDA backend: unknown sequence " + std::to_string(id));
  DeviceSequence& seq = *seqs_[id];
  if (!seq.mtp_tags) return Status::Ok();
  return launch_mtp_forget_from(seq.mtp_tags, seq.ring, n, stream_);
}

Result<int32_t> CudaForward::last_argmax() {
  int32_t v = 0;
  DS4_CUDA_TRY(cudaMemcpyAsync(&v, ws_->argmax, sizeof(v), cudaMemcpyDeviceToHost, stream_));
  DS4_CUDA_TRY(cudaStreamSynchronize(stream_));
  return v;
}

}  // namespace ds4
