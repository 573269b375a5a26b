// One-token products of dense Q8_0 (or F16) matrices with an f32 vector, written for
// the memory-bandwidth rate of the decode path rather than through the generic
// cuda/matvec.h kernel: the q LoRA up-projection (with the q norm folded into the x
// load), the grouped output projection (one slot per group), its second stage, the
// shared expert (gate+up with SwiGLU, then down) and the q_a / kv projections.
//
// For every slot s < n_slots and row r < n_rows, with
//   W_s[r] = row fixed_matrix * w.rows + s * slot_row_stride + r of the weight stack,
//   x_s    = x + s * x_slot_stride   (times rsqrt(mean(x^2) + eps) * x_norm_weight when set),
// plain:  v = W_s[r] . x_s
// paired: v = silu(min(W_s[r] . x_s, limit)) * clamp(U_s[r] . x_s, -limit, limit)
//         (U = w_up, the same type and shape as W; limit INFINITY: no clamp)
// and v is stored to y[s * y_slot_stride + r], or added to it with `accumulate`.
// These are the MatvecLaunch fields of the same names, with the same meaning and the
// same x normalisation (sum of squares in double, in the generic kernel's order, so the
// normalised x is bit for bit the one launch_matvec computes with).
//
// Two kernels compute these products with the same sums in the same order (so the same
// bits); DenseMatvecOptions::kernel picks one.
//
// kRegisters: one wave of blocks sized from the device, each owning a contiguous range
// of one slot's rows. Every lane keeps 32 columns of x in registers (16-byte pieces
// side by side with the other lanes', so each warp load covers 512 contiguous bytes) and
// streams 16-byte weight loads of several rows at once (the next rows' loads issued
// before this batch's products); the first weights are loaded, and the block's remaining share asked
// into L2, before the programmatic-dependent-launch wait (weights are immutable), so DRAM
// streams while the previous kernel drains.
//
// kStream: one wave of blocks, each owning an equal contiguous range of the launch's
// (slot, row) pairs, so that every block reads the same number of bytes. One producer
// thread per block streams its share through a ring of shared-memory stages with bulk
// asynchronous copies (cp.async.bulk, completion counted on an mbarrier per stage), the
// first stages requested before the PDL wait; consumer warps read each stage, with the
// same lane slices, x registers and reductions as kRegisters, and hand the stage back.
// Needs sm_90 or newer and 16-byte aligned weight and scale arrays (else the launch
// runs kRegisters); the ring fits the GB10's 99 KiB per block. Slower than kRegisters on
// the H200 in every shape measured (graph chains with PDL, its fastest variants against
// kRegisters' defaults: q_b 12.0 against 11.6 us, out_a / out_b 12.8 / 12.3 against 10.4;
// its time follows the number of stages, not the ring depth), so kRegisters is the
// default; kept for measurements.
//
// Sums (both kernels): f32 activations, f32 accumulation (fixtures/README.md §4); per
// row, each lane's pieces in column order (each Q8_0 piece's sum times its block scale),
// the lanes by a fixed butterfly (partners 16, 8, 4, 2, 1 apart, whatever the batch),
// then the warps that own the row's other columns in warp order: results are
// deterministic, do not depend on scheduling (no atomics), and are the same bits from
// either kernel and every tuning variant.
//
// Launches allocate nothing and never synchronise with the host: they can be captured
// in a CUDA graph. Thread-safety: launches on the caller's stream; the host state is a
// per-device occupancy cache and a per-device record of the stream kernels' shared-memory
// limits, each guarded by a mutex, and two atomic switches (on/off, which kernel).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"
#include "cuda/matvec.h"

namespace ds4 {

struct DenseMatvecLaunch {
  const DeviceMatrix* w = nullptr;     // Q8_0 or F16; cols 1024, 2048, 4096 or 8192
  const DeviceMatrix* w_up = nullptr;  // set: paired SwiGLU (same type and shape as w)
  const float* x = nullptr;            // 16-byte aligned
  int64_t x_slot_stride = 0;           // a multiple of 4
  float* y = nullptr;
  int64_t y_slot_stride = 0;
  int n_slots = 1;
  int64_t n_rows = -1;                 // -1: w->rows
  int64_t slot_row_stride = 0;
  int fixed_matrix = 0;
  float swiglu_limit = INFINITY;       // paired only; INFINITY: no clamp
  bool accumulate = false;
  // x * rsqrt(mean(x^2) + eps) * x_norm_weight on load (one slot; 16-byte aligned).
  const float* x_norm_weight = nullptr;
  float x_norm_eps = 1e-6f;
};

// The kernel a launch runs (see above). kDefault: the process-wide choice
// (dense_matvec_kernel()).
enum class DenseKernel { kDefault, kRegisters, kStream };

// Tuning variants (tests/cuda/dense_matvec_test.cu times them); the defaults are the
// expected fastest.
struct DenseMatvecOptions {
  DenseKernel kernel = DenseKernel::kDefault;
  // kStream only. Consumer warps per block: 8 or 16; 0: 8.
  int stream_warps = 0;
  // kStream only. 1024-column row pieces each consumer warp takes from one stage (per
  // matrix): 1, 2 or 4; 0: 2, or 1 for paired launches. A stage holds
  // stream_warps * stream_units pieces (Q8_0: 1 KiB of quants each, plus scales).
  int stream_units = 0;
  // kStream only. Teams of stream_warps consumer warps, each team taking every
  // stream_teams-th stage (teams work on different stages at once): 1 or 2 (two only
  // with 8 warps); 0: 1.
  int stream_teams = 0;
  // kStream only. The producer warp's 32 lanes fill the stages with 16-byte asynchronous
  // copies (cp.async) instead of one lane's bulk copies.
  bool stream_lane_copies = false;
  // kStream only. Shared memory for the ring in KiB (at least two stages, at most eight,
  // within the device's per-block limit); 0: up to 96 KiB.
  int stream_ring_kib = 0;
  // Rows each lane loads before any of their products: 2, 4 or 8; 0: 4, or 2 for
  // paired launches (two blocks per multiprocessor without spilling) and for plain F16
  // launches of up to 4 MB of weights (measured fastest: the router), 8 for plain Q8_0
  // launches of 1024 columns and more than 12 MB with prefetch (q_b). 8 is refused for
  // paired launches, and with prefetch for F16 (too many registers); so is F16 paired
  // with 4 and prefetch.
  int rows_per_batch = 0;
  // Each lane issues the next batch's loads before this batch's products.
  bool prefetch = true;
  // Before the dependency wait, each block asks L2 for up to this many KiB of its share
  // beyond the first batch (its weights and scales); -1: the whole share, 0: none. None
  // by default: on the H200 (graph chains with PDL) the L2 requests made every 35 MB
  // launch slower (q_b 32768 x 1024: 13.9 us without, 16.9 us with the whole share).
  int l2_prefetch_kib = 0;
  // Blocks per multiprocessor; 0: kRegisters as many as fit at once, or one for launches
  // of up to 12 MB of weights (measured fastest: q_a, kv, the shared expert's down);
  // kStream one.
  int blocks_per_sm = 0;
};

// Ok when these kernels handle the launch, else an error naming what does not fit
// (type, columns, alignment, strides, slot count, a null pointer). Callers fall back to
// launch_matvec where it is not Ok.
Status dense_matvec_supported(const DenseMatvecLaunch& launch);

// The launch that `matvec` describes, when it is one these kernels handle: one token, no
// per-slot matrix ids, no summed slots, no slot weights, no enable flag, no int8
// activations, no tuning fields; else an error naming the field. The result still goes
// through dense_matvec_supported (types and shapes).
Result<DenseMatvecLaunch> dense_matvec_from(const MatvecLaunch& matvec);

Status launch_dense_matvec(const DenseMatvecLaunch& launch, cudaStream_t stream,
                           const DenseMatvecOptions& options = {});

// `matvec` through launch_dense_matvec when dense_matvec_from and dense_matvec_supported
// accept it and the switch below is on, else through launch_matvec: a drop-in
// replacement for launch_matvec at the decode's dense projections.
Status launch_dense_or_matvec(const MatvecLaunch& matvec, cudaStream_t stream);

// Process-wide switch for launch_dense_or_matvec (an atomic): on by default, off with the
// environment variable DS4_CUDA_DENSE_MATVEC=0 or set_dense_matvec_enabled(false). Graphs
// keep the kernels they were recorded with.
bool dense_matvec_enabled();
void set_dense_matvec_enabled(bool on);

// Process-wide kernel for launches with DenseKernel::kDefault (an atomic): kRegisters
// unless the environment variable DS4_CUDA_DENSE_KERNEL=stream (or =registers) or
// set_dense_matvec_kernel() says otherwise. Graphs keep the kernels they were recorded with.
DenseKernel dense_matvec_kernel();
void set_dense_matvec_kernel(DenseKernel kernel);  // kDefault: back to the environment's choice

}  // namespace ds4
