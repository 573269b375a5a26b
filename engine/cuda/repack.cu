#include "cuda/repack.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "cuda/cuda_check.h"

namespace ds4 {

bool has_split_layout(GgmlType type) { return type == GgmlType::Q8_0 || type == GgmlType::IQ2_XXS; }

size_t split_payload_bytes(GgmlType type) {
  switch (type) {
    case GgmlType::Q8_0: return 32;
    case GgmlType::IQ2_XXS: return 64;
    default: return 0;
  }
}

size_t split_block_bytes(GgmlType type) {
  return has_split_layout(type) ? 2 + split_payload_bytes(type) : 0;
}

namespace {

// One thread per block: the source block is read as 16-bit words (blocks are 34 / 66
// bytes, so only 2-byte alignment holds), the payload written as 16-byte words.
template <int kPayload>
__global__ void split_repack_kernel(const uint16_t* __restrict__ src, int64_t n_blocks,
                                    uint4* __restrict__ data, uint16_t* __restrict__ scales) {
  constexpr int kWordsIn = kPayload / 2 + 1;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < n_blocks;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint16_t* b = src + g * kWordsIn;
    uint32_t words[kPayload / 4];
#pragma unroll
    for (int i = 0; i < kPayload / 4; ++i) {
      words[i] = static_cast<uint32_t>(b[1 + 2 * i]) | (static_cast<uint32_t>(b[2 + 2 * i]) << 16);
    }
    scales[g] = b[0];
    uint4* out = data + g * (kPayload / 16);
#pragma unroll
    for (int j = 0; j < kPayload / 16; ++j) {
      out[j] = make_uint4(words[4 * j], words[4 * j + 1], words[4 * j + 2], words[4 * j + 3]);
    }
  }
}

}  // namespace

Status launch_split_repack(GgmlType type, const uint8_t* src, int64_t n_blocks, uint8_t* data,
                           uint16_t* scales, cudaStream_t stream) {
  if (!has_split_layout(type)) {
    return Status::Error(std::string("split repack: type ") + std::string(ggml_type_name(type)) +
                         " has no split layout");
  }
  if (reinterpret_cast<uintptr_t>(src) % 2 || reinterpret_cast<uintptr_t>(data) % 16 ||
      reinterpret_cast<uintptr_t>(scales) % 2) {
    return Status::Error("split repack: misaligned pointer (source needs 2 bytes, data 16, scales 2)");
  }
  if (n_blocks <= 0) return Status::Ok();
  const unsigned grid = static_cast<unsigned>(std::clamp<int64_t>((n_blocks + 255) / 256, 1, 8192));
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint4* d = reinterpret_cast<uint4*>(data);
  if (type == GgmlType::Q8_0) {
    split_repack_kernel<32><<<grid, 256, 0, stream>>>(s, n_blocks, d, scales);
  } else {
    split_repack_kernel<64><<<grid, 256, 0, stream>>>(s, n_blocks, d, scales);
  }
  return cuda_status(cudaGetLastError(), "launching the split repack kernel");
}

void split_repack_host(GgmlType type, const uint8_t* src, int64_t n_blocks, uint8_t* data,
                       uint16_t* scales) {
  const size_t block = split_block_bytes(type), payload = split_payload_bytes(type);
  for (int64_t g = 0; g < n_blocks; ++g) {
    const uint8_t* b = src + g * block;
    std::memcpy(scales + g, b, 2);
    std::memcpy(data + g * payload, b + 2, payload);
  }
}

}  // namespace ds4
