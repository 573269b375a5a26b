// The routed-expert products of one decode token (spec/MODEL.md §2.1.5, §2.6), written
// for the memory-bandwidth rate rather than through the generic cuda/matvec.h kernel:
//
//   gate+up: y[s * rows + r] = silu(min(G_s[r] . x, limit)) * clamp(U_s[r] . x, -limit, limit)
//            * weight[s], G_s / U_s = matrix ids[s] of the IQ2_XXS stacks, for s < n_used;
//   down:    y[r] (+)= sum over s < n_used of D_s[r] . x_s, D_s = matrix ids[s] of the Q2_K
//            stack, x_s = x + s * cols (the gate+up output).
//
// Each lane keeps one 32-column chunk of x in registers and reuses it for every row it
// walks (for gate+up, the same x serves all 2 * n_used matrices); the IQ2_XXS selector
// tables sit in shared memory, one copy per bank by default (conflict-free lookups). A
// warp's per-row partial sums are reduced over its lanes by a fixed reduce-scatter over
// several rows at once, then over the warps that own the row's other column chunks in
// warp order: results are deterministic (no atomics, no dependence on scheduling).
// Activations stay f32 and sums accumulate in f32 (fixtures/README.md §4).
//
// The integer tensor-core kernels (ExpertMatvecOptions::tensor_cores, the default) compute
// the same products exactly in integers. The weights are small integers times per-block
// factors (IQ2_XXS: +-{8, 25, 43} times (2S + 1) per 32 columns, times d / 8 per 256;
// Q2_K: q in 0..3 times sc (4 bits) per 16 columns, times d per 256, minus dmin * m per
// 16). x is written per 256-column block b as x_e ~ s_b a_e with s_b = 2^(E_b - 30), where
// max_b |x| < 2^E_b, and a_e = round(x_e / s_b), |a_e| < 2^30, split into four signed
// base-256 digits (int8) that fill four columns of the B operand of mma.sync m16n8k32
// s8.s8.s32; each thread of a row quad expands its own 8 weights straight into the A
// fragment. Per 256-column block and row the integer sum of products is exact (int32 per
// digit, combined in int64), then converted to f32 once and multiplied by d s_b / 8
// (IQ2_XXS) or d s_b (Q2_K, minus dmin * sum_g m_g X_g, X_g = the f32 sum of x over 16
// columns, computed once per x). Blocks and warps are then added in f32 in a fixed order.
// (E_b is at least -96, so s_b stays a normal float.) A warp owns a 16-row tile and a fixed
// range of 256-column blocks; the warps of a tile add their partial sums in warp order.
// Precision: |x_e - s_b a_e| <= s_b / 2 <= 2^-30 max_b|x| (exact where |x_e| >= max_b|x| /
// 64), so with n the number of 256-column terms added per output (cols / 256; down:
// n_used * cols / 256) and u = 2^-24,
//   |y - exact| <= sum_b (s_b / 2) sum_{e in b} |w_e|  +  (n + 24) u sum_e |w_e x_e|
// (Q2_K: |w_e| read as |d sc q| + |dmin m|), before the SwiGLU; the f32 kernels' bound is
// about 128 u sum_e |w_e x_e|. A non-finite value in a block of x makes every output
// that reads the block NaN.
//
// The staged kernels (ExpertMatvecOptions::staged) do the tensor-core kernels' integer
// arithmetic with the weights streamed into shared memory by asynchronous copies (cp.async)
// issued as soon as the ids are read, so that every multiprocessor keeps many weight loads
// in flight: gate+up gives each warp 8 output rows of both matrices (A fragment rows 0-7 the
// gate rows, 8-15 the up rows) and a ring of 256-column steps; down gives each warp the
// tensor-core kernel's share of a 16-row tile, copied at once. They add the same f32 terms
// in the same order as the tensor-core kernels (gate+up: as with one 256-column block per
// warp), so their outputs are the same bits and the precision statement above holds as is.
//
// The launches read ids and weights only on the device, never synchronise with the host
// and allocate nothing: they can be captured in a CUDA graph after the router kernel. They
// go through launch_kernel (cuda/launch.h): under programmatic dependent launch a kernel
// stages its immutable tables, then waits for its predecessors before reading ids, routing
// weights or x and before any write.
//
// Thread-safety: launches on the caller's stream; the only host state is a process-wide
// one-time table upload (expert_matvec_init), guarded by std::call_once.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"
#include "cuda/moe.h"

namespace ds4 {

// Tuning variants (the benchmarks of tests/cuda/expert_matvec_test.cu compare them);
// the defaults are the expected fastest.
struct ExpertMatvecOptions {
  // Rows whose weights each lane loads before any of their products: 4 or 8.
  int rows_per_batch = 4;
  // IQ2_XXS selectors in one copy per shared-memory bank (48 KiB per block, lookups
  // without bank conflicts) instead of one compact 1.5 KiB copy. Off: on the H200 the
  // compact copy measured faster (gate+up 28.0 us against 33.0, 6 experts of 2048 x 4096).
  bool lane_tables = false;
  // Blocks per multiprocessor; 0: as many as fit at once.
  int blocks_per_sm = 0;
  // Each lane loads the next batch's weights before this batch's products (twice the
  // load registers; no wait for memory after each batch's reduction). The tensor-core
  // kernels read it too: each warp loads its next unit of weights before this one's products.
  bool prefetch = true;
  // The integer tensor-core kernels (below) where the shape allows; else the f32 ones
  // above (rows_per_batch and lane_tables apply to those only).
  bool tensor_cores = true;
  // Tensor-core gate+up: the IQ2_XXS selector table one copy per shared-memory bank
  // (48 KiB, conflict-free lookups) instead of the compact 1.5 KiB copy.
  bool tc_lane_tables = true;
  // Tensor-core kernels: 256-column blocks of x per warp (gate+up 1 or 2, down 1, 2, 4 or 8);
  // 0: the fewest that fit (gate+up at most 16 warps per tile, down at most 12).
  int tc_blocks_per_warp = 0;
  // With tensor_cores: the staged kernels, the same integer arithmetic with every warp
  // streaming its weights into shared memory by asynchronous copies issued as soon as the
  // ids are read (gate+up: a ring of steps per warp, a warp owning 8 output rows of both
  // matrices; down: a warp's whole share of a 16-row tile at once). Outputs bit for bit those
  // of the tensor-core kernels with tc_blocks_per_warp = 0 (gate+up: where that gives one
  // 256-column block per warp, as at 4096 columns). Where the shape or the device's shared
  // memory does not allow them, the tensor-core kernels run. Of the tensor-core kernels'
  // options, tc_lane_tables applies to gate+up and tc_blocks_per_warp to down (gate+up with
  // tc_blocks_per_warp set runs the tensor-core kernel); prefetch does not apply.
  // Measured on the H200 (6 experts, graph chains of 40 with PDL): gate+up 17.5 us against
  // 28.7 us for the tensor-core kernel, down 12.3 us against 14.5 us.
  bool staged = true;
  // Staged gate+up: ring steps (256-column blocks) per warp, 2, 4 or 8; 0: the shallowest that
  // fits (measured on the H200: 2 steps 17.5 us, 4 steps 17.8 us, 8 steps 19.3 us).
  int staged_stages = 0;
  // Staged gate+up: warps per block, 1..16; 0: enough for one unit of 8 rows per warp over
  // the multiprocessors (at most 16).
  int staged_warps = 0;
  // Staged down: 16-row tiles per block at once, 1..8; 0: as many as 24 warps and the
  // shared memory allow.
  int staged_tiles = 0;
  // Staged down: 256-column blocks of its share whose copies a warp keeps in flight (the
  // next one issued as one lands); 0: all of them at once. Measured on the H200: 1 block
  // 12.3 us, 2 blocks 12.9 us, all (4) 14.4 us.
  int staged_blocks_ahead = 1;
};

struct ExpertGateUpLaunch {
  const DeviceMatrix* gate = nullptr;  // IQ2_XXS, `count` experts of rows x cols
  const DeviceMatrix* up = nullptr;    // the same type and shape
  const float* x = nullptr;            // cols values, 16-byte aligned
  const int32_t* ids = nullptr;        // device memory: n_used expert ids
  const float* weights = nullptr;      // device memory: n_used routing weights (nullptr: 1)
  int n_used = 0;
  float swiglu_limit = INFINITY;       // INFINITY: no clamp
  float* y = nullptr;                  // n_used x rows values
  // Set: the launch routes the token first, as launch_router(*route) would (one token: the
  // router's logits, bias or hash table, scale; its ids and weights are written to
  // route->ids and route->weights, which then serve as `ids` and `weights`, both ignored
  // here). The staged kernel does it itself, each block selecting from the 256 logits
  // (cuda/router_select.cuh: the same ids and weights bit for bit) where its block has a
  // thread per expert (at most 256 experts); otherwise the router kernel runs first.
  const RouterLaunch* route = nullptr;
};

struct ExpertDownLaunch {
  const DeviceMatrix* down = nullptr;  // Q2_K, `count` experts of rows x cols
  const float* x = nullptr;            // n_used x cols values (the gate+up output), 16-byte aligned
  const int32_t* ids = nullptr;        // device memory: n_used expert ids
  int n_used = 0;
  bool accumulate = true;              // y += sum (the shared expert's output is in y); else y = sum
  float* y = nullptr;                  // rows values
};

// Ok when the launch's types and shapes are ones these kernels handle with the default
// options (gate+up: IQ2_XXS with cols a multiple of 256, at most 8192, rows a multiple of
// 16; down: Q2_K with cols a multiple of 256, rows a multiple of 16, n_used * cols / 256 at
// most 64 and the quantized activations within the device's shared memory), else an
// error naming what does not fit. Callers fall back to launch_matvec where it is not Ok.
// The f32 kernels alone need cols a multiple of 1024 (down: n_used * cols / 1024 <= 12);
// a launch with tensor_cores = false outside that is refused.
Status expert_gate_up_supported(const ExpertGateUpLaunch& launch);
Status expert_down_supported(const ExpertDownLaunch& launch);

Status launch_expert_gate_up(const ExpertGateUpLaunch& launch, cudaStream_t stream,
                             const ExpertMatvecOptions& options = {});
// Whether launch_expert_gate_up(launch, options) routes inside its kernel (launch.route set
// and the staged kernel applies with a thread per expert), rather than after the router
// kernel. Tests use it to know which path they check.
bool expert_gate_up_routes_inside(const ExpertGateUpLaunch& launch, const ExpertMatvecOptions& options = {});
Status launch_expert_down(const ExpertDownLaunch& launch, cudaStream_t stream,
                          const ExpertMatvecOptions& options = {});

// Uploads the IQ2_XXS selector table and sets the kernels' shared-memory limits (once per
// process; idempotent). The launches call it themselves, also when the first one is being
// captured into a graph; calling it at setup keeps that work out of the first token.
Status expert_matvec_init();

}  // namespace ds4
