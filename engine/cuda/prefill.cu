// CudaForward::prefill: a chunk of one sequence's tokens through the model layer by
// layer (spec/MODEL.md §2.9). Each projection is one tensor-core product over the
// chunk (cuda/matmul.h), each small step one launch over all tokens
// (cuda/prefill_ops.h), and the compressors, indexer and attention see the chunk
// at once (cuda/prefill_attention.h). The sequence state ends exactly as if the
// tokens had been decoded one by one: the raw ring, the compressor state, the
// compressed and indexer rows.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/device_math.cuh"
#include "cuda/device_sequence.h"
#include "cuda/expert_matmul.h"
#include "cuda/forward.h"
#include "cuda/hyper_connections.h"
#include "cuda/matmul.h"
#include "cuda/matvec.h"
#include "cuda/moe.h"
#include "cuda/prefill_attention.h"
#include "cuda/prefill_ops.h"
#include "cuda/prefill_workspace.h"
#include "cuda/q8_matmul.h"
#include "cuda/routed_experts.h"
#include "cuda/row_ops.h"

namespace ds4 {
namespace {

// ring[p % ring_slots] = rows[p - pos0] for the last min(n, ring_slots) positions.
__global__ void write_ring_kernel(const float* rows, int n, int32_t pos0, int d, float* ring, int ring_slots) {
  const int first = n > ring_slots ? n - ring_slots : 0;
  const int t = first + blockIdx.x;
  if (t >= n) return;
  float* dst = ring + static_cast<int64_t>((pos0 + t) % ring_slots) * d;
  const float* src = rows + static_cast<int64_t>(t) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) dst[j] = src[j];
}

Status write_ring(const float* rows, int n, int32_t pos0, int d, float* ring, int ring_slots, cudaStream_t st) {
  const int count = std::min(n, ring_slots);
  if (count <= 0) return Status::Ok();
  write_ring_kernel<<<count, 128, 0, st>>>(rows, n, pos0, d, ring, ring_slots);
  return cuda_status(cudaGetLastError(), "writing the chunk's raw rows to the ring");
}

// The decode path's matrix-vector kernel over `n` tokens (f32 activations).
Status matvec_f32(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride, int n,
                  cudaStream_t st, int64_t n_rows = -1, bool accumulate = false) {
  MatvecLaunch m;
  m.w = &w;
  m.x = x;
  m.x_tok_stride = x_stride;
  m.y = y;
  m.y_tok_stride = y_stride;
  m.n_tokens = n;
  m.n_rows = n_rows;
  m.accumulate = accumulate;
  return launch_matvec(m, st);
}

// Sets the tensor-core products' precision: DS4_CUDA_PREFILL_PRECISION = exact (the
// default), f16act or f16 (cuda/matmul.h), read once; an unknown value fails the
// prefill with an error naming it.
Status set_precision(MatmulLaunch* l) {
  static const Result<MatmulPrecision> precision = []() -> Result<MatmulPrecision> {
    const char* v = std::getenv("DS4_CUDA_PREFILL_PRECISION");
    if (v == nullptr || *v == '\0') return MatmulPrecision::kExact;
    Result<MatmulPrecision> r = parse_matmul_precision(v);
    if (!r.ok()) return Status::Error("DS4_CUDA_PREFILL_PRECISION: " + r.status().message());
    return r;
  }();
  if (!precision.ok()) return precision.status();
  l->precision = precision.value();
  return Status::Ok();
}

// Whether the routed experts' products (gate/up, down) run the staged kExact kernels
// (MatmulLaunch::split_workspace, bit-identical to the default ones where they apply;
// workspace PrefillWorkspace::split): DS4_CUDA_PREFILL_STAGED = 1 turns them on,
// anything else (or unset) leaves them off. Read once.
bool use_staged() {
  static const bool on = [] {
    const char* v = std::getenv("DS4_CUDA_PREFILL_STAGED");
    return v != nullptr && std::string(v) == "1";
  }();
  return on;
}

// Whether the routed experts' grouped products run the integer tensor-core kernels of
// cuda/expert_matmul.h (where their shapes apply: IQ2_XXS gate/up, Q2_K down, columns a
// multiple of 256; else the tensor-core matmul as before): DS4_CUDA_PREFILL_EXPERTS unset,
// empty or "int8" selects them (the default), "exact" keeps the matmul kernels (kExact, or
// DS4_CUDA_PREFILL_PRECISION's). Read once; another value fails the prefill with an error
// naming it.
Result<bool> use_int8_experts() {
  static const Result<bool> on = []() -> Result<bool> {
    const char* v = std::getenv("DS4_CUDA_PREFILL_EXPERTS");
    if (v == nullptr || *v == '\0' || std::string(v) == "int8") return true;
    if (std::string(v) == "exact") return false;
    return Status::Error("DS4_CUDA_PREFILL_EXPERTS: '" + std::string(v) + "' (expected int8 or exact)");
  }();
  return on;
}

// Whether the dense Q8_0 products (the attention projections, the shared expert) run the
// integer tensor-core kernels of cuda/q8_matmul.h where their shapes apply (columns a
// multiple of 256; else the tensor-core matmul as before), and with how many activation
// digits: DS4_CUDA_PREFILL_DENSE "int8" selects them with four digits, "int8x3" with three
// (Q8MatmulOptions::digits: faster, a looser bound); unset, empty or "exact" keeps the
// matmul kernels (kExact, or DS4_CUDA_PREFILL_PRECISION's), the default: on the H200 the
// integer kernels measured 0.75-0.86x of kExact's speed on every dense shape at 2048
// tokens (three digits 0.84-1.01x), and the 2048-token prefill 2659 t/s against 2842.
// Returns 4, 3 or 0. Read once; another value fails the prefill with an error naming it.
Result<int> int8_dense_digits() {
  static const Result<int> digits = []() -> Result<int> {
    const char* v = std::getenv("DS4_CUDA_PREFILL_DENSE");
    if (v == nullptr || *v == '\0' || std::string(v) == "exact") return 0;
    if (std::string(v) == "int8") return 4;
    if (std::string(v) == "int8x3") return 3;
    return Status::Error("DS4_CUDA_PREFILL_DENSE: '" + std::string(v) + "' (expected int8, int8x3 or exact)");
  }();
  return digits;
}

// A stream of the prefill and the digit workspace of the integer dense products that run
// on it (null: none; cuda/q8_matmul.h).
struct DenseStream {
  cudaStream_t stream = nullptr;
  void* digits = nullptr;
};

// The integer kernel for launch `l` when selected and applicable (Q8_0, dense, columns a
// multiple of 256, a digit workspace): *ran tells whether it ran.
Status try_q8_matmul(const MatmulLaunch& l, void* workspace, cudaStream_t st, bool* ran) {
  *ran = false;
  const Result<int> digits = int8_dense_digits();
  DS4_RETURN_IF_ERROR(digits.status());
  if (digits.value() == 0 || workspace == nullptr || l.w == nullptr || l.w->type != GgmlType::Q8_0 ||
      !q8_matmul_supported(l).ok()) {
    return Status::Ok();
  }
  *ran = true;
  Q8MatmulOptions options;
  options.digits = digits.value();
  return launch_q8_matmul(l, workspace, st, options);
}

// Dense product of `n` activation rows through rows [row_begin, row_begin + n_rows) of `w`:
// on tensor cores (Q8_0 on the integer kernels where selected and applicable, with the
// digits in `on.digits`), or (f32) through the decode path's matrix-vector kernel over n
// tokens.
Status matmul(bool f32, const DeviceMatrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride, int n,
              const DenseStream& on, int64_t row_begin = 0, int64_t n_rows = -1, bool accumulate = false) {
  const cudaStream_t st = on.stream;
  if (f32) {
    if (row_begin != 0) return Status::Error("prefill: f32 products take whole matrices");
    return matvec_f32(w, x, x_stride, y, y_stride, n, st, n_rows, accumulate);
  }
  MatmulLaunch m;
  m.w = &w;
  m.x = x;
  m.x_stride = x_stride;
  m.y = y;
  m.y_stride = y_stride;
  m.n_tokens = n;
  m.row_begin = row_begin;
  m.n_rows = n_rows;
  m.accumulate = accumulate;
  bool ran = false;
  DS4_RETURN_IF_ERROR(try_q8_matmul(m, on.digits, st, &ran));
  if (ran) return Status::Ok();
  DS4_RETURN_IF_ERROR(set_precision(&m));
  // Two blocks per multiprocessor: faster for the dense products on the H200
  // (Q8_0 32768 x 1024: 1.28 ms against 1.46 ms for 2048 tokens).
  m.exact_two_blocks = true;
  if (!matmul_fits(m)) m.exact_two_blocks = false;
  if (!matmul_fits(m)) m.token_tile = 32;  // smaller tiles where shared memory is short (GB10)
  return launch_matmul(m, st);
}

// f32 products of a small matrix over `n` tokens (inputs that must stay f32: the HC
// mixing projections, the router, the indexer weights).
Status matvec_tokens(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride, int n,
                     cudaStream_t st) {
  // Chunks of 64 tokens or more: the register-tiled kernel (cuda/prefill_ops.h). Fewer:
  // the small-matmul kernel on the few-row, long-row HC projections (24 x 16384: 0.58 ms
  // against 1.8 ms for 2048 tokens on the H200), the matrix-vector kernel on the router
  // and indexer weights (256 and 64 rows of 4096: 0.51 / 0.15 ms against 0.79 / 0.20).
  const bool aligned = x_stride % 4 == 0 && y_stride % 4 == 0 && w.cols % 4 == 0;
  const bool plain = w.count == 1 && (w.type == GgmlType::F16 || w.type == GgmlType::F32);
  if (aligned && plain && n >= 64) return launch_tiled_matmul_tokens(w, x, x_stride, y, y_stride, n, st);
  if (aligned && plain && w.rows <= 32) return launch_small_matmul_tokens(w, x, x_stride, y, y_stride, n, st);
  return matvec_f32(w, x, x_stride, y, y_stride, n, st);
}

// h[a][j] = silu(min(g, limit)) * clamp(u, -limit, limit) * scale[a] for the rows a
// below *count (or n_rows when count is null): the paired product's epilogue.
__global__ void swiglu_rows_kernel(float* h, const float* u, int64_t stride, int cols, int n_rows,
                                   const int32_t* count, const float* scale, float limit) {
  const int rows = count ? *count : n_rows;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < static_cast<int64_t>(rows) * cols;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t a = i / cols;
    const int64_t j = i % cols;
    float y = cuda_detail::swiglu(h[a * stride + j], u[a * stride + j], limit);
    if (scale) y *= scale[a];
    h[a * stride + j] = y;
  }
}

// A paired (gate/up SwiGLU) product: dense Q8_0 on the integer kernels where selected and
// applicable (their digits in `digits`; null: never). Otherwise, where the device cannot
// hold the paired kernel's tiles (the GB10's ~99 KiB of shared memory per block against
// the kExact paired kernels' ~105-123 KiB), gate and up run as two unpaired products (the
// second into `up_rows`, same layout as the output) and a pass applies the SwiGLU.
Status paired_matmul(const MatmulLaunch& launch, float* up_rows, cudaStream_t st, void* digits = nullptr) {
  bool ran = false;
  DS4_RETURN_IF_ERROR(try_q8_matmul(launch, digits, st, &ran));
  if (ran) return Status::Ok();
  MatmulLaunch l = launch;
  DS4_RETURN_IF_ERROR(set_precision(&l));
  if (matmul_fits(l)) return launch_matmul(l, st);
  MatmulLaunch small = l;  // 32-token tiles (the kF16Activations paired kernel fits the GB10 so)
  small.token_tile = 32;
  if (matmul_fits(small)) return launch_matmul(small, st);
  MatmulLaunch g = l;
  g.w_up = nullptr;
  g.row_scale = nullptr;
  g.accumulate = false;
  g.split_workspace = nullptr;  // unpaired fallback: the default kernels
  if (!matmul_fits(g)) g.token_tile = 32;
  MatmulLaunch u = g;
  u.w = l.w_up;
  u.y = up_rows;
  DS4_RETURN_IF_ERROR(launch_matmul(g, st));
  DS4_RETURN_IF_ERROR(launch_matmul(u, st));
  const int64_t rows = l.n_rows < 0 ? l.w->rows - l.row_begin : l.n_rows;
  const int blocks = static_cast<int>(std::min<int64_t>((static_cast<int64_t>(l.n_tokens) * rows + 255) / 256, 8192));
  swiglu_rows_kernel<<<std::max(blocks, 1), 256, 0, st>>>(l.y, up_rows, l.y_stride, static_cast<int>(rows), l.n_tokens,
                                                          l.group_offsets ? l.group_offsets + l.n_groups : nullptr,
                                                          l.row_scale, l.swiglu_limit);
  return cuda_status(cudaGetLastError(), "SwiGLU of the split gate/up products");
}

// A routed-expert grouped product (paired gate/up, or down): on the integer tensor-core
// kernels where selected and applicable (their digits in `workspace`, for `pool_rows`
// rows of x), else as before: paired through paired_matmul (`up_rows` for its unpaired
// fallback), unpaired through launch_matmul.
Status expert_product(const MatmulLaunch& l, void* workspace, int64_t pool_rows, float* up_rows, cudaStream_t st) {
  const Result<bool> int8_experts = use_int8_experts();
  DS4_RETURN_IF_ERROR(int8_experts.status());
  if (int8_experts.value() && workspace) {
    ExpertMatmulLaunch e;
    e.w = l.w;
    e.w_up = l.w_up;
    e.x = l.x;
    e.x_stride = l.x_stride;
    e.y = l.y;
    e.y_stride = l.y_stride;
    e.n_tokens = l.n_tokens;
    e.swiglu_limit = l.swiglu_limit;
    e.accumulate = l.accumulate;
    e.group_offsets = l.group_offsets;
    e.n_groups = l.n_groups;
    e.x_rows = l.x_rows;
    e.row_scale = l.row_scale;
    e.workspace = workspace;
    e.x_pool_rows = pool_rows;
    // gate+up: the small tiles, two stages (H200, 2048 tokens x 6 of 256 experts: 6.47 ms
    // against 6.63 for the defaults); down: the defaults (256 rows, 3 stages: 2.64 ms).
    ExpertMatmulOptions o;
    if (e.w_up) {
      o.small_tiles = true;
      o.stages = 2;
    }
    if (expert_matmul_supported(e, o).ok()) return launch_expert_matmul(e, st, o);
  }
  if (l.w_up) return paired_matmul(l, up_rows, st);
  MatmulLaunch d = l;
  DS4_RETURN_IF_ERROR(set_precision(&d));
  if (!matmul_fits(d)) d.token_tile = 32;
  return launch_matmul(d, st);
}

}  // namespace

Status CudaForward::ensure_prefill_workspace(int64_t index_rows) {
  const ModelConfig& c = model_.config();
  if (!pws_) {
    auto p = std::make_unique<PrefillWorkspace>();
    PrefillWorkspace& w = *p;
    const int64_t T = kMaxPrefill;
    const int64_t A = T * c.n_experts_used;
    const int64_t qdim = static_cast<int64_t>(c.n_heads) * c.head_dim;
    const int64_t comp_w = 2 * static_cast<int64_t>(std::max(c.head_dim, c.index_head_dim));
    const int H = PrefillWorkspace::kHeadRows;
    Carver k;
    k.take(&w.tokens, T);
    k.take(&w.pos0, 1);
    k.take(&w.x, T * c.hc_dim());
    k.take(&w.xb, T * c.hc_dim());
    k.take(&w.mix, T * c.hc_mix());
    k.take(&w.post, T * c.hc_mult);
    k.take(&w.comb, T * c.hc_mult * c.hc_mult);
    k.take(&w.n, T * c.dim);
    k.take(&w.a, T * c.q_lora);
    k.take(&w.an, T * c.q_lora);
    k.take(&w.qf, T * qdim);
    k.take(&w.kv_raw, T * c.head_dim);
    k.take(&w.kv, T * c.head_dim);
    k.take(&w.ck, T * comp_w);
    k.take(&w.cz, T * comp_w);
    k.take(&w.iq, T * c.index_heads * c.index_head_dim);
    k.take(&w.iw, T * c.index_heads);
    k.take(&w.selected, T * std::max(1, c.index_topk));
    k.take(&w.active, T);
    k.take(&w.heads, T * qdim);
    k.take(&w.u, T * c.out_groups * c.out_lora);
    k.take(&w.out, T * c.dim);
    k.take(&w.router, T * c.n_experts);
    k.take(&w.route_ids, A);
    k.take(&w.route_w, A);
    k.take(&w.group_offsets, c.n_experts + 1);
    k.take(&w.x_rows, A);
    k.take(&w.row_scale, A);
    k.take(&w.slot_of, A);
    k.take(&w.h, A * c.expert_ffn);
    k.take(&w.h_up, A * c.expert_ffn);
    k.take(&w.hs, T * c.expert_ffn);
    k.take(&w.hs_up, T * c.expert_ffn);
    k.take(&w.ya, A * c.dim);
    // One workspace for the routed experts' products, which run one after the other on
    // one stream: the staged kernels' split activations and the integer kernels' digits.
    size_t split_bytes = 0;
    if (use_staged()) {
      split_bytes = std::max(matmul_split_workspace_bytes(c.dim, T), matmul_split_workspace_bytes(c.expert_ffn, A));
    }
    const Result<bool> int8_experts = use_int8_experts();
    DS4_RETURN_IF_ERROR(int8_experts.status());
    if (int8_experts.value()) {
      split_bytes = std::max({split_bytes, expert_matmul_workspace_bytes(c.dim, T),
                              expert_matmul_workspace_bytes(c.expert_ffn, A)});
    }
    if (split_bytes > 0) k.take(&w.split, static_cast<int64_t>(split_bytes / sizeof(float)) + 1);
    // The integer dense products' digits, one workspace per stream: the main stream's
    // widest input is the output projection's (out_groups * out_lora columns), the side's
    // the sublayer input (dim; the shared expert's down reads expert_ffn).
    const Result<int> int8_dense = int8_dense_digits();
    DS4_RETURN_IF_ERROR(int8_dense.status());
    if (int8_dense.value() != 0) {
      const int64_t main_cols = std::max({static_cast<int64_t>(c.dim), static_cast<int64_t>(c.q_lora),
                                          static_cast<int64_t>(c.out_groups) * c.out_lora, qdim / c.out_groups});
      const int64_t side_cols = std::max({static_cast<int64_t>(c.dim), static_cast<int64_t>(c.q_lora),
                                          static_cast<int64_t>(c.expert_ffn)});
      k.take(&w.dense, static_cast<int64_t>(q8_matmul_workspace_bytes(main_cols, T) / sizeof(float)) + 1);
      k.take(&w.dense_side, static_cast<int64_t>(q8_matmul_workspace_bytes(side_cols, T) / sizeof(float)) + 1);
    }
    k.take(&w.attention, attention_chunk_workspace_floats(static_cast<int>(T), c.n_heads, c.head_dim));
    k.take(&w.head_mix, static_cast<int64_t>(H) * c.hc_mult);
    k.take(&w.head, static_cast<int64_t>(H) * c.dim);
    k.take(&w.logits, static_cast<int64_t>(H) * c.vocab);
    DS4_RETURN_IF_ERROR(k.allocate(&w.arena, "allocating the prefill workspace"));
    pws_ = std::move(p);
  }
  const int64_t need = indexer_chunk_workspace_floats(kMaxPrefill, index_rows);
  if (need > pws_->scores_floats) {
    if (pws_->scores) cudaFree(pws_->scores);
    pws_->scores = nullptr;
    pws_->scores_floats = 0;
    DS4_RETURN_IF_ERROR(cuda_status(cudaMalloc(&pws_->scores, sizeof(float) * need), "allocating indexer scores"));
    pws_->scores_floats = need;
  }
  return Status::Ok();
}

Status CudaForward::prefill(int id, const int32_t* tokens, int n, int32_t pos0, std::span<const int> logit_rows,
                            float* logits, std::span<const int> hidden_rows, float* hidden) {
  if (!valid(id)) return Status::Error("CUDA backend: unknown sequence " + std::to_string(id));
  DeviceSequence& seq = *seqs_[id];
  const ModelConfig& c = model_.config();
  if (n <= 0 || n > kMaxPrefill) {
    return Status::Error("CUDA backend: a prefill chunk holds 1.." + std::to_string(kMaxPrefill) + " tokens, not " +
                         std::to_string(n));
  }
  if (pos0 < 0 || pos0 + n > seq.max_ctx) {
    return Status::Error("CUDA backend: positions " + std::to_string(pos0) + ".." + std::to_string(pos0 + n - 1) +
                         " are outside the sequence context of " + std::to_string(seq.max_ctx));
  }
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab) {
      return Status::Error("CUDA backend: token id " + std::to_string(tokens[i]) + " is outside the vocabulary");
    }
  }
  DS4_RETURN_IF_ERROR(ensure_prefill_workspace(seq.max_ctx / 4 + 1));
  PrefillWorkspace& w = *pws_;
  cudaStream_t st = stream_;
  DS4_CUDA_TRY(cudaMemcpyAsync(w.tokens, tokens, sizeof(int32_t) * n, cudaMemcpyHostToDevice, st));
  DS4_CUDA_TRY(cudaMemcpyAsync(w.pos0, &pos0, sizeof(int32_t), cudaMemcpyHostToDevice, st));

  const HcShape hc = hc_shape(c);
  DS4_RETURN_IF_ERROR(
      launch_hc_embed_tokens(model_.token_embd().data, model_.token_embd().type, w.tokens, n, hc, w.x, st));
  stage("embed");
  for (int l = 0; l < c.n_layers; ++l) DS4_RETURN_IF_ERROR(prefill_layer(seq, l, n, pos0));

  // The head for the wanted rows, in groups of kHeadRows.
  const int H = PrefillWorkspace::kHeadRows;
  for (size_t g = 0; g < logit_rows.size(); g += H) {
    const int rows = static_cast<int>(std::min<size_t>(H, logit_rows.size() - g));
    for (int r = 0; r < rows; ++r) {
      const int t = logit_rows[g + r];
      if (t < 0 || t >= n) return Status::Error("CUDA backend: logit row outside the prefill chunk");
      const float* xt = w.x + static_cast<int64_t>(t) * c.hc_dim();
      MatvecLaunch hm;
      hm.w = &model_.output_hc_fn();
      hm.x = xt;
      hm.y = w.head_mix + static_cast<int64_t>(r) * c.hc_mult;
      DS4_RETURN_IF_ERROR(launch_matvec(hm, st));
      DS4_RETURN_IF_ERROR(launch_hc_head(xt, hm.y, model_.output_hc_scale(), model_.output_hc_base(),
                                         model_.output_norm(), hc, w.head + static_cast<int64_t>(r) * c.dim, st));
    }
    MatvecLaunch lm;
    lm.w = &model_.output();
    lm.x = w.head;
    lm.x_tok_stride = c.dim;
    lm.y = w.logits;
    lm.y_tok_stride = c.vocab;
    lm.n_tokens = rows;
    DS4_RETURN_IF_ERROR(launch_matvec(lm, st));
    DS4_CUDA_TRY(cudaMemcpyAsync(logits + g * c.vocab, w.logits, sizeof(float) * rows * c.vocab,
                                 cudaMemcpyDeviceToHost, st));
  }
  for (size_t k = 0; k < hidden_rows.size(); ++k) {
    const int t = hidden_rows[k];
    if (t < 0 || t >= n) return Status::Error("CUDA backend: hidden row outside the prefill chunk");
    DS4_CUDA_TRY(cudaMemcpyAsync(hidden + k * c.hc_dim(), w.x + static_cast<int64_t>(t) * c.hc_dim(),
                                 sizeof(float) * c.hc_dim(), cudaMemcpyDeviceToHost, st));
  }
  DS4_CUDA_TRY(cudaStreamSynchronize(st));
  return cuda_status(cudaGetLastError(), "prefill");
}

Status CudaForward::prefill_layer(DeviceSequence& seq, int l, int n, int32_t pos0) {
  const ModelConfig& c = model_.config();
  const DeviceLayer& L = model_.layer(l);
  const DeviceSequence::Layer& S = seq.layers[l];
  PrefillWorkspace& w = *pws_;
  cudaStream_t st = stream_;
  const float* freqs = model_.rope_freqs(L.ratio != 0);
  const HcShape hc = hc_shape(c);
  const int64_t hcd = c.hc_dim();
  const int64_t qdim = static_cast<int64_t>(c.n_heads) * c.head_dim;
  float* ring = seq.raw + static_cast<int64_t>(l) * seq.ring * c.head_dim;
  // Few tokens (MTP verification) read the weights once through the decode kernels;
  // f32_prefill_ selects that path for any chunk (the exact reference mode).
  const bool f32 = f32_prefill_ || n <= kF32PrefillTokens;

  // Attention sublayer (§2.5).
  DS4_RETURN_IF_ERROR(matvec_tokens(L.hc_attn_fn, w.x, hcd, w.mix, c.hc_mix(), n, st));
  DS4_RETURN_IF_ERROR(launch_hc_pre_tokens(w.x, w.mix, L.hc_attn_scale, L.hc_attn_base, L.attn_norm, hc, n, w.post,
                                           w.comb, w.n, st));
  stage("hc_pre attn");
  // Two streams, as in decode: the side stream `sd` computes the kv rows, the
  // compressors and the indexer while the main one runs the q path; each buffer has
  // one writer, and the main stream waits for the side before attention.
  cudaStream_t sd = side_;
  auto join = [](cudaStream_t from, cudaEvent_t e, cudaStream_t to) -> Status {
    DS4_CUDA_TRY(cudaEventRecord(e, from));
    DS4_CUDA_TRY(cudaStreamWaitEvent(to, e, 0));
    return Status::Ok();
  };
  const DenseStream on_main{st, w.dense}, on_side{sd, w.dense_side};
  DS4_RETURN_IF_ERROR(join(st, ev_fork_, sd));
  DS4_RETURN_IF_ERROR(matmul(f32, L.q_a, w.n, c.dim, w.a, c.q_lora, n, on_main));
  RowPostLaunch an;
  an.in = w.a;
  an.in_stride = c.q_lora;
  an.out = w.an;
  an.out_stride = c.q_lora;
  an.n_rows = n;
  an.d = c.q_lora;
  an.norm = true;
  an.norm_weight = L.q_a_norm;
  an.eps = c.norm_eps;
  DS4_RETURN_IF_ERROR(launch_row_post(an, st));
  DS4_CUDA_TRY(cudaEventRecord(ev_latent_, st));  // the indexer (side) reads w.an
  DS4_RETURN_IF_ERROR(matmul(f32, L.q_b, w.an, c.q_lora, w.qf, qdim, n, on_main));
  RowPostLaunch q;
  q.in = q.out = w.qf;
  q.in_stride = q.out_stride = c.head_dim;
  q.n_rows = n * c.n_heads;
  q.d = c.head_dim;
  q.norm = true;
  q.eps = c.norm_eps;
  q.rope_dim = c.rope_dim;
  q.rope_freqs = freqs;
  q.pos = w.pos0;
  q.rows_per_pos = c.n_heads;
  DS4_RETURN_IF_ERROR(launch_row_post(q, st));
  stage("q path");
  DS4_RETURN_IF_ERROR(matmul(f32, L.kv, w.n, c.dim, w.kv_raw, c.head_dim, n, on_side));
  RowPostLaunch kv = q;
  kv.in = w.kv_raw;
  kv.out = w.kv;
  kv.n_rows = n;
  kv.norm_weight = L.kv_a_norm;
  kv.qat = qat_ ? RowQat::kFp8Nope : RowQat::kNone;
  kv.rows_per_pos = 1;
  DS4_RETURN_IF_ERROR(launch_row_post(kv, sd));

  const int32_t last = pos0 + n - 1;
  const bool index_active = L.ratio == 4 && (last + 1) / 4 > c.index_topk;
  if (L.ratio != 0) {
    const int64_t cw = L.compressor.kv.rows;
    DS4_RETURN_IF_ERROR(matmul(f32, L.compressor.kv, w.n, c.dim, w.ck, cw, n, on_side));
    DS4_RETURN_IF_ERROR(matmul(f32, L.compressor.gate, w.n, c.dim, w.cz, cw, n, on_side));
    CompressorChunkLaunch cl;
    cl.k = w.ck;
    cl.z = w.cz;
    cl.kz_stride = cw;
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
    cl.pos0 = pos0;
    cl.n = n;
    DS4_RETURN_IF_ERROR(launch_compressor_chunk(cl, sd));
    if (L.ratio == 4) {
      const int64_t iw = L.index_compressor.kv.rows;
      DS4_RETURN_IF_ERROR(matmul(f32, L.index_compressor.kv, w.n, c.dim, w.ck, iw, n, on_side));
      DS4_RETURN_IF_ERROR(matmul(f32, L.index_compressor.gate, w.n, c.dim, w.cz, iw, n, on_side));
      CompressorChunkLaunch il = cl;
      il.kz_stride = iw;
      il.ape = L.index_compressor.ape;
      il.norm_weight = L.index_compressor.norm;
      il.state_k = S.index_k;
      il.state_z = S.index_z;
      il.state_slots = S.index_slots;
      il.rows = S.index_rows;
      il.d = c.index_head_dim;
      il.qat = qat_ ? RowQat::kHadamardFp4 : RowQat::kNone;
      DS4_RETURN_IF_ERROR(launch_compressor_chunk(il, sd));
      if (index_active) {
        DS4_CUDA_TRY(cudaStreamWaitEvent(sd, ev_latent_, 0));
        const int64_t iqd = static_cast<int64_t>(c.index_heads) * c.index_head_dim;
        DS4_RETURN_IF_ERROR(matmul(f32, L.index_q_b, w.an, c.q_lora, w.iq, iqd, n, on_side));
        RowPostLaunch iq;
        iq.in = iq.out = w.iq;
        iq.in_stride = iq.out_stride = c.index_head_dim;
        iq.n_rows = n * c.index_heads;
        iq.d = c.index_head_dim;
        iq.rope_dim = c.rope_dim;
        iq.rope_freqs = freqs;
        iq.pos = w.pos0;
        iq.rows_per_pos = c.index_heads;
        iq.qat = qat_ ? RowQat::kHadamardFp4 : RowQat::kNone;
        DS4_RETURN_IF_ERROR(launch_row_post(iq, sd));
        DS4_RETURN_IF_ERROR(matvec_tokens(L.index_proj, w.n, c.dim, w.iw, c.index_heads, n, sd));
      }
      IndexerChunkLaunch ix;
      ix.q = w.iq;
      ix.weights = w.iw;
      ix.rows = S.index_rows;
      ix.max_rows = S.comp_max;
      ix.heads = c.index_heads;
      ix.head_dim = c.index_head_dim;
      ix.ratio = 4;
      ix.topk = c.index_topk;
      ix.pos0 = pos0;
      ix.n = n;
      ix.scores = w.scores;
      ix.scores_stride = S.comp_max;
      ix.selected = w.selected;
      ix.active = w.active;
      if (index_active) {
        DS4_RETURN_IF_ERROR(launch_indexer_chunk(ix, sd));
      } else {
        DS4_CUDA_TRY(cudaMemsetAsync(w.active, 0, sizeof(int32_t) * n, sd));
      }
    }
  }
  DS4_RETURN_IF_ERROR(join(sd, ev_join_, st));
  stage("kv, compressors, indexer (joined)");
  AttentionChunkLaunch at;
  at.q = w.qf;
  at.out = w.heads;
  at.ring = ring;
  at.ring_slots = seq.ring;
  at.chunk_kv = w.kv;
  at.window = c.window;
  at.comp = S.comp_rows;
  at.max_comp_rows = S.comp_max;
  at.ratio = L.ratio;
  at.topk = c.index_topk;
  at.selected = w.selected;
  at.active = w.active;
  at.sinks = L.sinks;
  at.heads = c.n_heads;
  at.head_dim = c.head_dim;
  at.rope_dim = c.rope_dim;
  at.rope_freqs = freqs;
  at.pos0 = pos0;
  at.n = n;
  at.workspace = w.attention;
  DS4_RETURN_IF_ERROR(launch_attention_chunk(at, st));
  // The chunk's raw rows join the ring only now: its queries read them from w.kv.
  DS4_RETURN_IF_ERROR(write_ring(w.kv, n, pos0, c.head_dim, ring, seq.ring, st));
  stage("attention");

  const int64_t ug = static_cast<int64_t>(c.out_groups) * c.out_lora;
  const int64_t group_in = static_cast<int64_t>(c.heads_per_group()) * c.head_dim;
  if (f32) {
    MatvecLaunch oa;  // the decode path's grouped launch, over n tokens
    oa.w = &L.out_a;
    oa.x = w.heads;
    oa.x_tok_stride = qdim;
    oa.x_slot_stride = group_in;
    oa.y = w.u;
    oa.y_tok_stride = ug;
    oa.y_slot_stride = c.out_lora;
    oa.n_tokens = n;
    oa.n_slots = c.out_groups;
    oa.n_rows = c.out_lora;
    oa.slot_row_stride = c.out_lora;
    DS4_RETURN_IF_ERROR(launch_matvec(oa, st));
  } else {
    for (int g = 0; g < c.out_groups; ++g) {
      DS4_RETURN_IF_ERROR(matmul(f32, L.out_a, w.heads + g * group_in, qdim, w.u + static_cast<int64_t>(g) * c.out_lora,
                                 ug, n, on_main, static_cast<int64_t>(g) * c.out_lora, c.out_lora));
    }
  }
  DS4_RETURN_IF_ERROR(matmul(f32, L.out_b, w.u, ug, w.out, c.dim, n, on_main));
  DS4_RETURN_IF_ERROR(launch_hc_post_tokens(w.x, w.out, w.post, w.comb, hc, n, w.xb, st));
  stage("output proj + hc_post");

  // MoE sublayer (§2.6).
  DS4_RETURN_IF_ERROR(matvec_tokens(L.hc_ffn_fn, w.xb, hcd, w.mix, c.hc_mix(), n, st));
  DS4_RETURN_IF_ERROR(launch_hc_pre_tokens(w.xb, w.mix, L.hc_ffn_scale, L.hc_ffn_base, L.ffn_norm, hc, n, w.post,
                                           w.comb, w.n, st));
  stage("hc_pre ffn");
  DS4_RETURN_IF_ERROR(matvec_tokens(L.gate_inp, w.n, c.dim, w.router, c.n_experts, n, st));
  RouterTokensLaunch rl;
  rl.base.logits = w.router;
  rl.base.n_experts = c.n_experts;
  rl.base.n_used = c.n_experts_used;
  rl.base.bias = L.hash ? nullptr : L.exp_probs_b;
  rl.base.tid2eid = L.hash ? L.tid2eid : nullptr;
  rl.base.token = w.tokens;
  rl.base.route_scale = c.route_scale;
  rl.base.route_norm = c.route_norm;
  rl.base.ids = w.route_ids;
  rl.base.weights = w.route_w;
  rl.n = n;
  DS4_RETURN_IF_ERROR(launch_router_tokens(rl, st));
  const float limit = L.swiglu_limit > 0 ? L.swiglu_limit : INFINITY;
  if (f32) {
    // As the decode path: shared expert first, then each token's routed experts added.
    MatvecLaunch sgu;
    sgu.w = &L.gate_shexp;
    sgu.w_up = &L.up_shexp;
    sgu.x = w.n;
    sgu.x_tok_stride = c.dim;
    sgu.y = w.hs;
    sgu.y_tok_stride = c.expert_ffn;
    sgu.n_tokens = n;
    sgu.swiglu_limit = limit;
    DS4_RETURN_IF_ERROR(launch_matvec(sgu, st));
    DS4_RETURN_IF_ERROR(matmul(f32, L.down_shexp, w.hs, c.expert_ffn, w.out, c.dim, n, on_main));
    const int k = c.n_experts_used;
    for (int t = 0; t < n; ++t) {
      RoutedExpertsLaunch re;
      re.layer = &L;
      re.n_used = k;
      re.swiglu_limit = limit;
      re.x = w.n + static_cast<int64_t>(t) * c.dim;
      re.ids = w.route_ids + t * k;
      re.weights = w.route_w + t * k;
      re.h = w.h + static_cast<int64_t>(t) * k * c.expert_ffn;
      re.y = w.out + static_cast<int64_t>(t) * c.dim;
      re.fast = expert_kernels_;
      DS4_RETURN_IF_ERROR(launch_routed_gate_up(re, st));
      DS4_RETURN_IF_ERROR(launch_routed_down(re, st));
    }
    return launch_hc_post_tokens(w.xb, w.out, w.post, w.comb, hc, n, w.x, st);
  }
  // Side: the shared expert, stored into w.out; the routed sum is added to it below
  // (one f32 addition per value, a + b == b + a).
  DS4_RETURN_IF_ERROR(join(st, ev_fork_, sd));
  MatmulLaunch sgu;
  sgu.w = &L.gate_shexp;
  sgu.w_up = &L.up_shexp;
  sgu.x = w.n;
  sgu.x_stride = c.dim;
  sgu.y = w.hs;
  sgu.y_stride = c.expert_ffn;
  sgu.n_tokens = n;
  sgu.swiglu_limit = limit;
  DS4_RETURN_IF_ERROR(paired_matmul(sgu, w.hs_up, sd, w.dense_side));
  DS4_RETURN_IF_ERROR(matmul(f32, L.down_shexp, w.hs, c.expert_ffn, w.out, c.dim, n, on_side));
  MoeGroupLaunch gl;
  gl.ids = w.route_ids;
  gl.weights = w.route_w;
  gl.n = n;
  gl.k = c.n_experts_used;
  gl.n_experts = c.n_experts;
  gl.offsets = w.group_offsets;
  gl.x_rows = w.x_rows;
  gl.row_scale = w.row_scale;
  gl.slot_of = w.slot_of;
  DS4_RETURN_IF_ERROR(launch_moe_group(gl, st));
  stage("router + expert grouping");
  const int assignments = n * c.n_experts_used;
  MatmulLaunch gu;
  gu.w = &L.gate_exps;
  gu.w_up = &L.up_exps;
  gu.x = w.n;
  gu.x_stride = c.dim;
  gu.y = w.h;
  gu.y_stride = c.expert_ffn;
  gu.n_tokens = assignments;
  gu.swiglu_limit = limit;
  gu.group_offsets = w.group_offsets;
  gu.n_groups = c.n_experts;
  gu.x_rows = w.x_rows;
  gu.row_scale = w.row_scale;
  if (use_staged()) {
    gu.split_workspace = w.split;
    gu.x_pool_rows = n;
  }
  DS4_RETURN_IF_ERROR(expert_product(gu, w.split, n, w.h_up, st));
  stage("experts gate/up");
  MatmulLaunch dn;
  dn.w = &L.down_exps;
  dn.x = w.h;
  dn.x_stride = c.expert_ffn;
  dn.y = w.ya;
  dn.y_stride = c.dim;
  dn.n_tokens = assignments;
  dn.group_offsets = w.group_offsets;
  dn.n_groups = c.n_experts;
  if (use_staged()) {
    dn.split_workspace = w.split;
    dn.x_pool_rows = assignments;
  }
  DS4_RETURN_IF_ERROR(expert_product(dn, w.split, assignments, nullptr, st));
  stage("experts down");
  DS4_RETURN_IF_ERROR(join(sd, ev_join_, st));
  stage("shared expert (joined)");
  DS4_RETURN_IF_ERROR(launch_moe_combine(w.ya, w.slot_of, n, c.n_experts_used, c.dim, true, w.out, st));
  DS4_RETURN_IF_ERROR(launch_hc_post_tokens(w.xb, w.out, w.post, w.comb, hc, n, w.x, st));
  stage("combine + hc_post");
  return Status::Ok();
}

}  // namespace ds4
