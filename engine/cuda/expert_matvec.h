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
// The launches read ids and weights only on the device, never synchronise with the host
// and allocate nothing: they can be captured in a CUDA graph after the router kernel.
//
// Thread-safety: launches on the caller's stream; the only host state is a process-wide
// one-time table upload (expert_matvec_init), guarded by std::call_once.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"

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
  // load registers; no wait for memory after each batch's reduction).
  bool prefetch = true;
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
};

struct ExpertDownLaunch {
  const DeviceMatrix* down = nullptr;  // Q2_K, `count` experts of rows x cols
  const float* x = nullptr;            // n_used x cols values (the gate+up output), 16-byte aligned
  const int32_t* ids = nullptr;        // device memory: n_used expert ids
  int n_used = 0;
  bool accumulate = true;              // y += sum (the shared expert's output is in y); else y = sum
  float* y = nullptr;                  // rows values
};

// Ok when the launch's types and shapes are ones these kernels handle (gate+up: IQ2_XXS
// with cols a multiple of 1024, at most 8192; down: Q2_K with cols a multiple of 1024 and
// n_used * cols / 1024 at most 12), else an error naming what does not fit. Callers fall
// back to launch_matvec where it is not Ok.
Status expert_gate_up_supported(const ExpertGateUpLaunch& launch);
Status expert_down_supported(const ExpertDownLaunch& launch);

Status launch_expert_gate_up(const ExpertGateUpLaunch& launch, cudaStream_t stream,
                             const ExpertMatvecOptions& options = {});
Status launch_expert_down(const ExpertDownLaunch& launch, cudaStream_t stream,
                          const ExpertMatvecOptions& options = {});

// Uploads the IQ2_XXS selector table and sets the kernels' shared-memory limits (once per
// process; idempotent). The launches call it themselves, also when the first one is being
// captured into a graph; calling it at setup keeps that work out of the first token.
Status expert_matvec_init();

}  // namespace ds4
