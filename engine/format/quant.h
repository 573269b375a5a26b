// Quantized block formats (spec/GGUF.md §6, MODEL.md appendix A) as data plus the
// per-type routines that every backend's reference relies on: dequantize a row
// and take a row's dot product with float activations.
//
// The defining operation is "dequantize the weight row, dot it with the float
// activation" (GGUF.md §6.7); the engine keeps activations in float (no 8-bit
// activation quantization), see shared/fixtures/README.md §4.
//
// Thread-safety: pure functions over caller memory.
#pragma once

#include <cstdint>

#include "common/status.h"
#include "format/ggml_type.h"

namespace ds4 {

// Per-type routines. `n` is a whole number of blocks.
struct QuantOps {
  GgmlType type;
  // out[0..n) = the n elements stored in `blocks`.
  void (*dequantize)(const void* blocks, float* out, int64_t n);
  // sum_i w[i] * x[i] over the n elements of `blocks`, accumulated in float.
  float (*dot)(const void* blocks, const float* x, int64_t n);
};

// nullptr when the type has no routines (types the DeepSeek V4 files never use).
const QuantOps* quant_ops(GgmlType type);
bool quant_supported(GgmlType type);

// Convenience wrappers; they abort on an unsupported type, so callers check
// quant_supported() (the weight binder does, naming the tensor) first.
void dequantize_row(GgmlType type, const void* row, float* out, int64_t n);
float dot_row(GgmlType type, const void* row, const float* x, int64_t n);

// IEEE half <-> float, and bfloat16 -> float.
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);  // round to nearest even
float bf16_to_f32(uint16_t h);

}  // namespace ds4
