// Split repack: Q8_0 and IQ2_XXS blocks in the file layout (an f16 scale followed by
// the block's payload: 32 int8 quants / 64 code bytes) rewritten into the split
// layout of cuda/device_matrix.h (payloads back to back in `data`, scales in
// `scales`). Block g of the source becomes data[g*payload ...] and scales[g]; the
// bits are the file's bits, only moved. One rule, two places: on the GPU (the upload
// path) and on the host (the former upload path and the reference it is tested
// against).
//
// Thread-safety: stateless functions; launches go to the caller's stream.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "format/ggml_type.h"

namespace ds4 {

// True for the types that have a split device layout (Q8_0, IQ2_XXS).
bool has_split_layout(GgmlType type);
// Bytes of one file block of a split type (34 / 66) and of its payload (32 / 64).
size_t split_block_bytes(GgmlType type);
size_t split_payload_bytes(GgmlType type);

// Repacks `n_blocks` file blocks at `src` (device memory, 2-byte aligned) into `data`
// (16-byte aligned) and `scales`, on `stream`. Errors: a type without a split layout,
// a misaligned pointer, a failed launch.
Status launch_split_repack(GgmlType type, const uint8_t* src, int64_t n_blocks, uint8_t* data,
                           uint16_t* scales, cudaStream_t stream);

// The same rule on the host (any alignment).
void split_repack_host(GgmlType type, const uint8_t* src, int64_t n_blocks, uint8_t* data,
                       uint16_t* scales);

}  // namespace ds4
