// Per-type dequantize and dot routines (spec/GGUF.md §6), dispatched through a table.
//
// Every dot product dequantizes a chunk of at most 256 weights into a small local
// buffer and accumulates w*x into 16 independent float lanes: a plain loop that the
// compiler vectorizes on any target (no intrinsics), reduced pairwise at the end.
#include "format/quant.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "format/iq2xxs_grid.h"
#include "format/quant_blocks.h"

namespace ds4 {
namespace {

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// IEEE half -> float without branches (vectorizes) and without ever feeding a float
// subnormal to the FPU (which is slow on some CPUs): normals and inf/NaN are rebiased
// in the integer domain, half subnormals come out of one exact float subtraction.
inline float Fp16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  const uint32_t exp = em & 0x7C00u;
  const uint32_t inf_nan = 0u - static_cast<uint32_t>(exp == 0x7C00u);  // all-ones masks
  const uint32_t subnormal = 0u - static_cast<uint32_t>(exp == 0);
  const uint32_t normal = (em << 13) + (112u << 23) + ((112u << 23) & inf_nan);
  const uint32_t small = std::bit_cast<uint32_t>(std::bit_cast<float>((em << 13) + (113u << 23)) -
                                                 std::bit_cast<float>(113u << 23));
  return std::bit_cast<float>(((small & subnormal) | (normal & ~subnormal)) | sign);
}

// ---- Float accumulation ------------------------------------------------------------

constexpr int kLanes = 16;

struct Lanes {
  float acc[kLanes] = {};

  // acc += a[i] * b[i] over n elements (any n).
  void add(const float* a, const float* b, int64_t n) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
    }
    for (int j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];
  }

  float sum() const {
    float r[kLanes];
    std::copy(acc, acc + kLanes, r);
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int j = 0; j < width; ++j) r[j] += r[j + width];
    }
    return r[0];
  }
};

// ---- Dequantizers: n elements (a whole number of blocks) ------------------------------

void DequantF32(const void* src, float* out, int64_t n) {
  std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
}

void DequantF16(const void* src, float* out, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) out[i] = Fp16ToF32(LoadU16(p + 2 * i));
}

void DequantBF16(const void* src, float* out, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(LoadU16(p + 2 * i));
}

void DequantI32(const void* src, float* out, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    int32_t v;
    std::memcpy(&v, p + 4 * i, sizeof(v));
    out[i] = static_cast<float>(v);
  }
}

// Q8_0 (§6.2): w = d * qs[i].
void DequantQ8_0(const void* src, float* out, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQK8_0; ++b, p += sizeof(BlockQ8_0), out += kQK8_0) {
    const float d = Fp16ToF32(LoadU16(p));
    const int8_t* qs = reinterpret_cast<const int8_t*>(p + 2);
    for (int i = 0; i < kQK8_0; ++i) out[i] = d * static_cast<float>(qs[i]);
  }
}

// Q2_K (§6.3): scales[16] | qs[64] | d | dmin. Element e = 128h + 32s + l takes bits
// 2s..2s+1 of qs[32h + l]; sub-block g = e / 16 has scale code scales[g] & 15 and min
// code scales[g] >> 4.
void DequantQ2_K(const void* src, float* out, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQK_K; ++b, p += sizeof(BlockQ2_K), out += kQK_K) {
    const uint8_t* scales = p;
    const uint8_t* qs = p + 16;
    const float d = Fp16ToF32(LoadU16(p + 80));
    const float dmin = Fp16ToF32(LoadU16(p + 82));
    uint8_t codes[kQK_K];
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        uint8_t* c = codes + 128 * h + 32 * s;
        const uint8_t* q = qs + 32 * h;
        for (int l = 0; l < 32; ++l) c[l] = static_cast<uint8_t>((q[l] >> (2 * s)) & 3);
      }
    }
    for (int g = 0; g < 16; ++g) {
      const float dl = d * static_cast<float>(scales[g] & 0x0F);
      const float ml = dmin * static_cast<float>(scales[g] >> 4);
      const uint8_t* c = codes + 16 * g;
      float* o = out + 16 * g;
      for (int l = 0; l < 16; ++l) o[l] = dl * static_cast<float>(c[l]) - ml;
    }
  }
}

// Q4_K (§6.4): d | dmin | scales[12] | qs[128].
void UnpackQ4_KScales(const uint8_t* k, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = k[j] & 63;
    mn[j] = k[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>((k[j + 4] & 0x0F) | ((k[j - 4] >> 6) << 4));
    mn[j] = static_cast<uint8_t>((k[j + 4] >> 4) | ((k[j] >> 6) << 4));
  }
}

void DequantQ4_K(const void* src, float* out, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQK_K; ++b, p += sizeof(BlockQ4_K), out += kQK_K) {
    const float d = Fp16ToF32(LoadU16(p));
    const float dmin = Fp16ToF32(LoadU16(p + 2));
    uint8_t sc[8], mn[8];
    UnpackQ4_KScales(p + 4, sc, mn);
    const uint8_t* qs = p + 16;
    for (int pair = 0; pair < 4; ++pair) {
      const uint8_t* q = qs + 32 * pair;
      const int j_lo = 2 * pair, j_hi = 2 * pair + 1;
      const float d_lo = d * static_cast<float>(sc[j_lo]), m_lo = dmin * static_cast<float>(mn[j_lo]);
      const float d_hi = d * static_cast<float>(sc[j_hi]), m_hi = dmin * static_cast<float>(mn[j_hi]);
      float* o = out + 64 * pair;
      for (int l = 0; l < 32; ++l) o[l] = d_lo * static_cast<float>(q[l] & 0x0F) - m_lo;
      for (int l = 0; l < 32; ++l) o[32 + l] = d_hi * static_cast<float>(q[l] >> 4) - m_hi;
    }
  }
}

// IQ2_XXS (§6.5): d | eight 8-byte groups (four grid indices, four sign indices, scale).
// The codebook and the sign masks are expanded once into float tables (12 KiB), so
// each 8-element sub-group is two plain multiplies the compiler vectorizes.
struct Iq2xxsFloatTables {
  float magnitude[256][8];
  float sign[128][8];
  Iq2xxsFloatTables() {
    for (int g = 0; g < 256; ++g) {
      for (int i = 0; i < 8; ++i) magnitude[g][i] = static_cast<float>((kIq2xxsGrid[g] >> (8 * i)) & 0xFF);
    }
    for (uint32_t s = 0; s < 128; ++s) {
      for (int i = 0; i < 8; ++i) sign[s][i] = (iq2xxs_sign_mask(s) >> i) & 1 ? -1.0f : 1.0f;
    }
  }
};

const Iq2xxsFloatTables& Iq2xxsTables() {
  static const Iq2xxsFloatTables tables;
  return tables;
}

void DequantIQ2_XXS(const void* src, float* out, int64_t n) {
  const Iq2xxsFloatTables& t = Iq2xxsTables();
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQK_K; ++b, p += sizeof(BlockIQ2_XXS), out += kQK_K) {
    const float d = Fp16ToF32(LoadU16(p));
    for (int ib = 0; ib < 8; ++ib) {
      const uint32_t a = LoadU32(p + 2 + 8 * ib);
      const uint32_t s = LoadU32(p + 6 + 8 * ib);
      const float db = d * (0.5f + static_cast<float>(s >> 28)) * 0.25f;
      for (int k = 0; k < 4; ++k) {
        const float* mag = t.magnitude[(a >> (8 * k)) & 0xFF];
        const float* sign = t.sign[(s >> (7 * k)) & 0x7F];
        float* o = out + 32 * ib + 8 * k;
        for (int i = 0; i < 8; ++i) o[i] = db * mag[i] * sign[i];
      }
    }
  }
}

// ---- Dot products ----------------------------------------------------------------------

// Dequantizes `blocks` in chunks of up to 256 elements and accumulates the dot with x.
template <void (*Dequant)(const void*, float*, int64_t), int64_t kBlockElems, int64_t kBlockBytes>
float DotByChunks(const void* blocks, const float* x, int64_t n) {
  constexpr int64_t kChunk = kBlockElems >= 256 ? kBlockElems : 256 / kBlockElems * kBlockElems;
  alignas(64) float buf[kChunk];
  const uint8_t* p = static_cast<const uint8_t*>(blocks);
  Lanes lanes;
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t m = std::min(kChunk, n - i);
    Dequant(p + i / kBlockElems * kBlockBytes, buf, m);
    lanes.add(buf, x + i, m);
  }
  return lanes.sum();
}

float DotF32(const void* w, const float* x, int64_t n) {
  Lanes lanes;
  lanes.add(static_cast<const float*>(w), x, n);
  return lanes.sum();
}

constexpr QuantOps kOps[] = {
    {GgmlType::F32, DequantF32, DotF32},
    {GgmlType::F16, DequantF16, DotByChunks<DequantF16, 1, 2>},
    {GgmlType::BF16, DequantBF16, DotByChunks<DequantBF16, 1, 2>},
    {GgmlType::I32, DequantI32, DotByChunks<DequantI32, 1, 4>},
    {GgmlType::Q8_0, DequantQ8_0, DotByChunks<DequantQ8_0, kQK8_0, sizeof(BlockQ8_0)>},
    {GgmlType::Q2_K, DequantQ2_K, DotByChunks<DequantQ2_K, kQK_K, sizeof(BlockQ2_K)>},
    {GgmlType::Q4_K, DequantQ4_K, DotByChunks<DequantQ4_K, kQK_K, sizeof(BlockQ4_K)>},
    {GgmlType::IQ2_XXS, DequantIQ2_XXS, DotByChunks<DequantIQ2_XXS, kQK_K, sizeof(BlockIQ2_XXS)>},
};

[[noreturn]] void AbortUnsupported(GgmlType type, const char* what) {
  std::fprintf(stderr, "ds4: %s: no routines for ggml type %.*s (id %u)\n", what,
               static_cast<int>(ggml_type_name(type).size()), ggml_type_name(type).data(),
               static_cast<unsigned>(type));
  std::abort();
}

}  // namespace

const QuantOps* quant_ops(GgmlType type) {
  for (const QuantOps& ops : kOps) {
    if (ops.type == type) return &ops;
  }
  return nullptr;
}

bool quant_supported(GgmlType type) { return quant_ops(type) != nullptr; }

void dequantize_row(GgmlType type, const void* row, float* out, int64_t n) {
  const QuantOps* ops = quant_ops(type);
  if (ops == nullptr) AbortUnsupported(type, "dequantize_row");
  ops->dequantize(row, out, n);
}

float dot_row(GgmlType type, const void* row, const float* x, int64_t n) {
  const QuantOps* ops = quant_ops(type);
  if (ops == nullptr) AbortUnsupported(type, "dot_row");
  return ops->dot(row, x, n);
}

// ---- fp16 / bf16 -------------------------------------------------------------------------

float fp16_to_f32(uint16_t h) { return Fp16ToF32(h); }

uint16_t f32_to_fp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) {  // NaN: quiet, keep the top payload bits
    return static_cast<uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  }
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520: inf
  if (ax < 0x38800000u) {  // below 2^-14: a half subnormal (or zero)
    const uint32_t e = ax >> 23;
    if (e < 102) return static_cast<uint16_t>(sign);  // below 2^-25: rounds to zero
    const uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;  // value = m * 2^(e-150)
    const uint32_t shift = 126 - e;                   // to units of 2^-24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t h = (((ax >> 23) - 112) << 10) | ((ax >> 13) & 0x3FFu);
  const uint32_t rem = ax & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;  // a carry moves into the exponent
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

}  // namespace ds4
