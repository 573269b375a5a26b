// Small GPU steps of the MTP draft block (spec/MODEL.md §2.11) around the shared
// block and head launches: the input combination X_h = e_proj.e + h_proj.h_h, and the
// bookkeeping of the block's raw window. The block itself runs through the same
// per-layer launches as the main model (CudaForward, layer index n_layers), its
// head through the main model's hc_head / output launches with the MTP weights.
//
// Unlike the main layers, whose positions always run 0..length-1, the MTP block sees
// only the positions it was evaluated at (drafts start where the main model stands,
// rejected ones are forgotten). Its raw ring therefore carries a position tag per
// slot: a row is attended only when its slot's tag equals the position the window
// wants (the CPU reference's raw_holds), and truncation clears the tags of the
// dropped positions. Positions are read from device memory: graph-safe.
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"

namespace ds4 {

// x[h*dim + i] += e[i] for every stream h < mult (the e_proj row broadcast onto the
// h_proj rows already in x; one f32 addition per value, as the CPU's ep + hp).
Status launch_mtp_add_broadcast(float* x, const float* e, int dim, int mult, cudaStream_t stream);

// tags[*pos % ring] = *pos: the slot of the current position holds its row.
Status launch_mtp_mark_position(int32_t* tags, int ring, const int32_t* pos, cudaStream_t stream);

// Every tag >= n becomes -1 (empty): the rows of positions >= n are forgotten.
Status launch_mtp_forget_from(int32_t* tags, int ring, int32_t n, cudaStream_t stream);

}  // namespace ds4
