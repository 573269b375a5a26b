// Quant formats: the block test vectors of spec/GGUF.md §6.8, fp16/bf16 conversions,
// and the dot products against dequantize-then-dot.
#include "format/quant.h"

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "format/ggml_type.h"
#include "format/iq2xxs_grid.h"
#include "format/quant_blocks.h"

namespace ds4 {
namespace {

std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

struct BlockVector {
  GgmlType type;
  std::string hex;
  std::vector<std::pair<int, double>> values;  // (element index, expected value)
  double sum;
};

// spec/GGUF.md §6.8, verbatim.
const BlockVector kVectors[] = {
    {GgmlType::Q8_0,
     "7c0d15b4c14712f8ba1d9004d626b31d0222ee4a27e3060bcecc1f1fe610fa7f07e2",
     {{0, 0.00702953339}, {1, -0.0254402161}, {2, -0.0210886002}, {3, 0.0237665176},
      {15, 0.0113811493}, {16, -0.00602531433}, {31, -0.0100421906}},
     -0.0237665176},
    {GgmlType::Q2_K,
     "ba3afd694ccdcfab56bc587c48596cad4b5d558febea55a38c8ad94b715f1647"
     "f81ea9e465ad649069f960b925e705b4ab80870f8c629c79f669e7469b71b549"
     "d56246274a8598bbfb453a95afaab6863c177b1b",
     {{0, 0.0128078461}, {1, -0.0225162506}, {2, -0.0225162506}, {3, 0.0128078461},
      {15, 0.0128078461}, {16, -0.0109577179}, {31, -0.0109577179}, {32, -0.00886726379},
      {33, 0.014093399}, {63, -0.00601959229}, {64, -0.0146102905}, {100, 0.0356483459},
      {127, 0.00233078003}, {128, 0.0135288239}, {200, 0.0277786255}, {255, 0.00939559937}},
     0.222263336},
    {GgmlType::Q4_K,
     "3c06d913f9babff9a77f6eaeb2cfcc9b88f253db98865309d087a4a922e96779"
     "d6fbd9b597f89464d9d975d8a7afa795455a79c5fdec488bb584f7666f790746"
     "cc2487c86788479457ba589c26c8009c8b146dcbb62ab49858774c79ab176798"
     "760a594f7766c09cac54a864feaa48579ab4b4229479b58ddd8aea83b76daf62"
     "d649300a5393969ddd442fa57a8a9d91",
     {{0, 0.00601816177}, {1, -0.0265159607}, {2, -0.0210936069}, {3, 0.022285223},
      {15, 0.0114405155}, {16, -0.00482654572}, {31, -0.0102488995}, {32, -0.0162119865},
      {33, 0.0224103928}, {63, -0.0106945038}, {64, -0.01410079}, {100, 0.037268877},
      {127, 0.00473475456}, {128, 0.0111284256}, {200, 0.0275907516}, {255, 0.0112369061}},
     0.198816299},
    {GgmlType::IQ2_XXS,
     "a80d501daf3ae66a9290eb618500752f96fca21c84c689a714ca6bc55d7c47bd"
     "b5ba4900c616d275dcb1d0a8af36a2b24b89d5d1e0f31e444d80501e148c2890"
     "c790",
     {{0, 0.0204980373}, {1, -0.0204980373}, {2, -0.0204980373}, {3, 0.0352566242},
      {15, 0.00655937195}, {16, -0.00655937195}, {31, -0.00655937195}, {32, -0.0107021332},
      {33, 0.0107021332}, {63, -0.0107021332}, {64, -0.00863075256}, {100, 0.0426790714},
      {127, 0.00794029236}, {128, 0.00794029236}, {200, 0.0315454006}, {255, 0.0204980373}},
     0.278255463},
};

// Relative agreement at the precision the spec prints (9 significant digits, ~1e-6).
void CheckClose(double got, double expected, double rel = 1e-6) {
  CHECK(std::fabs(got - expected) <= rel * std::fabs(expected) + 1e-12);
}

std::vector<uint8_t> RandomBlocks(GgmlType type, int64_t n, uint32_t seed) {
  const GgmlTypeInfo* info = ggml_type_info(type);
  std::vector<uint8_t> bytes(ggml_row_bytes(type, n));
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  // Keep every fp16 scale a small finite number so that values stay finite.
  const size_t bb = info->block_bytes;
  for (size_t off = 0; off < bytes.size(); off += bb) {
    auto put_scale = [&](size_t at) {
      uint16_t h = f32_to_fp16(std::ldexp(static_cast<float>(rng() % 1000 + 1), -16));
      std::memcpy(&bytes[off + at], &h, 2);
    };
    switch (type) {
      case GgmlType::Q8_0: case GgmlType::IQ2_XXS: put_scale(0); break;
      case GgmlType::Q4_K: put_scale(0); put_scale(2); break;
      case GgmlType::Q2_K: put_scale(80); put_scale(82); break;
      case GgmlType::F16: put_scale(0); break;
      case GgmlType::BF16: {
        uint16_t h = static_cast<uint16_t>(std::bit_cast<uint32_t>(
                         static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 512.0f) >> 16);
        std::memcpy(&bytes[off], &h, 2);
        break;
      }
      case GgmlType::F32: {
        float f = static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 333.0f;
        std::memcpy(&bytes[off], &f, 4);
        break;
      }
      case GgmlType::I32: {
        int32_t v = static_cast<int32_t>(rng() % 2001) - 1000;
        std::memcpy(&bytes[off], &v, 4);
        break;
      }
      default: break;
    }
  }
  return bytes;
}

}  // namespace

TEST_CASE("type table: block sizes follow ggml, not ds4's erratum") {
  struct Row { uint32_t id; const char* name; uint32_t elems, bytes; };
  const Row rows[] = {
      {0, "F32", 1, 4}, {1, "F16", 1, 2}, {2, "Q4_0", 32, 18}, {3, "Q4_1", 32, 20},
      {6, "Q5_0", 32, 22}, {7, "Q5_1", 32, 24}, {8, "Q8_0", 32, 34}, {9, "Q8_1", 32, 36},
      {10, "Q2_K", 256, 84}, {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144},
      {13, "Q5_K", 256, 176}, {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292},
      {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74}, {18, "IQ3_XXS", 256, 98},
      {19, "IQ1_S", 256, 50}, {20, "IQ4_NL", 32, 18}, {21, "IQ3_S", 256, 110},
      {22, "IQ2_S", 256, 82}, {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1}, {25, "I16", 1, 2},
      {26, "I32", 1, 4}, {27, "I64", 1, 8}, {28, "F64", 1, 8}, {29, "IQ1_M", 256, 56},
      {30, "BF16", 1, 2}, {34, "TQ1_0", 256, 54}, {35, "TQ2_0", 256, 66}, {39, "MXFP4", 32, 17},
  };
  int known = 0;
  for (const Row& r : rows) {
    CAPTURE(r.name);
    const GgmlTypeInfo* info = ggml_type_info(r.id);
    REQUIRE(info != nullptr);
    CHECK(info->name == r.name);
    CHECK(info->block_elems == r.elems);
    CHECK(info->block_bytes == r.bytes);
    CHECK(static_cast<uint32_t>(info->type) == r.id);
  }
  for (uint32_t id = 0; id < 1000; ++id) known += ggml_type_info(id) != nullptr;
  CHECK(known == static_cast<int>(std::size(rows)));
  CHECK(ggml_type_info(4) == nullptr);
  CHECK(ggml_type_info(31) == nullptr);
  CHECK(ggml_type_info(0xFFFFFFFFu) == nullptr);
  CHECK(ggml_row_bytes(GgmlType::Q2_K, 4096) == 16 * 84);
  CHECK(ggml_row_bytes(GgmlType::Q8_0, 4096) == 128 * 34);
  CHECK(ggml_row_bytes(GgmlType::F16, 7) == 14);
}

TEST_CASE("IQ2_XXS tables pass the spec's consistency checks") {
  uint64_t sum = 0, x = 0;
  for (uint64_t g : kIq2xxsGrid) {
    sum += g;
    x ^= g;
    for (int i = 0; i < 8; ++i) {
      const uint64_t mag = (g >> (8 * i)) & 0xFF;
      CHECK((mag == 8 || mag == 25 || mag == 43));
    }
  }
  CHECK(sum == 0x8b267e217ce24363ull);
  CHECK(x == 0x0000003232003211ull);
  int sign_sum = 0;
  for (uint32_t j = 0; j < 128; ++j) sign_sum += iq2xxs_sign_mask(j);
  CHECK(sign_sum == 16320);
  CHECK(iq2xxs_sign_mask(1) == 0x81);
  CHECK(iq2xxs_sign_mask(3) == 0x03);
  CHECK(iq2xxs_sign_mask(127) == 0xff);
}

TEST_CASE("spec §6.8 test vectors dequantize to the published values") {
  for (const BlockVector& v : kVectors) {
    const std::string name(ggml_type_name(v.type));
    CAPTURE(name);
    const GgmlTypeInfo* info = ggml_type_info(v.type);
    const std::vector<uint8_t> block = FromHex(v.hex);
    REQUIRE(block.size() == info->block_bytes);
    REQUIRE(quant_supported(v.type));
    std::vector<float> out(info->block_elems);
    dequantize_row(v.type, block.data(), out.data(), info->block_elems);
    for (const auto& value : v.values) {
      const int index = value.first;
      const double expected = value.second;
      CAPTURE(index);
      CheckClose(out[index], expected);
    }
    double sum = 0;
    for (float f : out) sum += f;
    CheckClose(sum, v.sum, 2e-6);
    // The dot with all-ones activations is the sum of the block.
    std::vector<float> ones(info->block_elems, 1.0f);
    CheckClose(dot_row(v.type, block.data(), ones.data(), info->block_elems), v.sum, 1e-5);
  }
}

TEST_CASE("Q2_K and Q4_K decode each element by the §6.3/§6.4 formulas") {
  // A hand-built block: every 2-bit/4-bit field holds a distinct position code, so
  // any mix-up of the element order changes a value.
  BlockQ2_K q2{};
  for (int g = 0; g < 16; ++g) q2.scales[g] = static_cast<uint8_t>(((g % 15) + 1) | ((15 - g) << 4));
  for (int i = 0; i < 64; ++i) q2.qs[i] = static_cast<uint8_t>(i * 37 + 11);
  q2.d = f32_to_fp16(0.5f);
  q2.dmin = f32_to_fp16(0.25f);
  float out[256];
  dequantize_row(GgmlType::Q2_K, &q2, out, 256);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, s = (e % 128) / 32, l = e % 32, g = e / 16;
    const int q = (q2.qs[32 * h + l] >> (2 * s)) & 3;
    const double want = 0.5 * (q2.scales[g] & 15) * q - 0.25 * (q2.scales[g] >> 4);
    CAPTURE(e);
    CHECK(out[e] == doctest::Approx(want).epsilon(1e-7));
  }

  BlockQ4_K q4{};
  q4.d = f32_to_fp16(0.125f);
  q4.dmin = f32_to_fp16(0.0625f);
  for (int i = 0; i < 12; ++i) q4.scales[i] = static_cast<uint8_t>(i * 53 + 7);
  for (int i = 0; i < 128; ++i) q4.qs[i] = static_cast<uint8_t>(i * 29 + 3);
  dequantize_row(GgmlType::Q4_K, &q4, out, 256);
  const uint8_t* k = q4.scales;
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32, p = e / 64, l = e % 32;
    int sc, mn;
    if (j < 4) {
      sc = k[j] & 63;
      mn = k[j + 4] & 63;
    } else {
      sc = (k[j + 4] & 0x0F) | ((k[j - 4] >> 6) << 4);
      mn = (k[j + 4] >> 4) | ((k[j] >> 6) << 4);
    }
    const int q = (e % 64) < 32 ? q4.qs[32 * p + l] & 0x0F : q4.qs[32 * p + l] >> 4;
    const double want = 0.125 * sc * q - 0.0625 * mn;
    CAPTURE(e);
    CHECK(out[e] == doctest::Approx(want).epsilon(1e-7));
  }
}

TEST_CASE("fp16 to f32 is exact for every half, including subnormals, inf and NaN") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    const float got = fp16_to_f32(static_cast<uint16_t>(h));
    if (exp == 31) {
      if (man == 0) {
        CHECK(std::isinf(got));
        CHECK(std::signbit(got) == ((h & 0x8000) != 0));
      } else {
        CHECK(std::isnan(got));
        // The payload moves to the top of the float mantissa.
        CHECK(((std::bit_cast<uint32_t>(got) >> 13) & 0x3FF) == man);
      }
      continue;
    }
    const double want = exp == 0 ? sign * std::ldexp(static_cast<double>(man), -24)
                                 : sign * std::ldexp(1.0 + man / 1024.0, static_cast<int>(exp) - 15);
    if (static_cast<double>(got) != want) {
      CAPTURE(h);
      CHECK(static_cast<double>(got) == want);
    }
    if (h == 0x8000) CHECK(std::signbit(got));
  }
  CHECK(fp16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(fp16_to_f32(0x03FF) == std::ldexp(1023.0f, -24));  // largest subnormal
  CHECK(fp16_to_f32(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(fp16_to_f32(0x7BFF) == 65504.0f);
  CHECK(fp16_to_f32(0x3C00) == 1.0f);
}

TEST_CASE("f32 to fp16 round-trips every half and rounds to nearest even") {
  int mismatches = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_f32(static_cast<uint16_t>(h));
    const uint16_t back = f32_to_fp16(f);
    if (std::isnan(f)) {
      mismatches += (back & 0x7C00) != 0x7C00 || (back & 0x3FF) == 0 || (back & 0x8000) != (h & 0x8000);
    } else {
      mismatches += back != h;
    }
  }
  CHECK(mismatches == 0);

  // Halfway between two adjacent finite halves: ties go to the even code.
  int tie_errors = 0;
  for (uint32_t h = 0; h < 0x7BFF; ++h) {
    const double lo = fp16_to_f32(static_cast<uint16_t>(h));
    const double hi = fp16_to_f32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact in float
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    tie_errors += f32_to_fp16(mid) != even;
    tie_errors += f32_to_fp16(-mid) != (even | 0x8000);
    // Just off the tie, the nearer neighbour wins.
    tie_errors += f32_to_fp16(std::nextafter(mid, 0.0f)) != h;
    tie_errors += f32_to_fp16(std::nextafter(mid, 1e9f)) != h + 1;
  }
  CHECK(tie_errors == 0);

  const float inf = std::numeric_limits<float>::infinity();
  CHECK(f32_to_fp16(inf) == 0x7C00);
  CHECK(f32_to_fp16(-inf) == 0xFC00);
  CHECK(f32_to_fp16(65504.0f) == 0x7BFF);
  CHECK(f32_to_fp16(65519.99f) == 0x7BFF);
  CHECK(f32_to_fp16(65520.0f) == 0x7C00);  // the tie above the largest half goes to inf
  CHECK(f32_to_fp16(1e10f) == 0x7C00);
  CHECK(f32_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);   // tie with 0 and 2^-24: even = 0
  CHECK(f32_to_fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
  CHECK(f32_to_fp16(std::ldexp(3.0f, -25)) == 0x0002);   // tie between 1 and 2: even = 2
  CHECK(f32_to_fp16(std::ldexp(1.0f, -30)) == 0x0000);
  CHECK(f32_to_fp16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(f32_to_fp16(-0.0f) == 0x8000);
  CHECK(f32_to_fp16(-std::ldexp(1.0f, -26)) == 0x8000);  // underflow keeps the sign
  const uint16_t qnan = f32_to_fp16(std::numeric_limits<float>::quiet_NaN());
  CHECK((qnan & 0x7C00) == 0x7C00);
  CHECK((qnan & 0x03FF) != 0);
  // A signalling NaN whose payload sits only in the low bits must stay a NaN.
  CHECK((f32_to_fp16(std::bit_cast<float>(0x7F800001u)) & 0x3FF) != 0);
}

TEST_CASE("bf16 to f32 takes the upper 16 bits") {
  CHECK(bf16_to_f32(0x3F80) == 1.0f);
  CHECK(bf16_to_f32(0xC040) == -3.0f);
  CHECK(bf16_to_f32(0x0001) == std::bit_cast<float>(0x00010000u));  // subnormal
  CHECK(std::isinf(bf16_to_f32(0x7F80)));
  CHECK(std::isnan(bf16_to_f32(0x7FC0)));
  CHECK(std::signbit(bf16_to_f32(0x8000)));
  const uint16_t raw[3] = {0x3F80, 0x4000, 0xBF00};
  float out[3];
  dequantize_row(GgmlType::BF16, raw, out, 3);
  CHECK(out[0] == 1.0f);
  CHECK(out[1] == 2.0f);
  CHECK(out[2] == -0.5f);
}

TEST_CASE("dot equals dequantize-then-dot for every supported type") {
  const GgmlType types[] = {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::I32,
                            GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q4_K, GgmlType::IQ2_XXS};
  std::mt19937 rng(7);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  for (GgmlType type : types) {
    const std::string name(ggml_type_name(type));
    CAPTURE(name);
    REQUIRE(quant_supported(type));
    const int64_t block = ggml_type_info(type)->block_elems;
    // Lengths that are whole blocks, including ones that leave a tail for the lanes.
    for (int64_t n : {block, 4 * block, 3 * 256 + block * (block == 1 ? 5 : 1), int64_t{4096}}) {
      if (n % block != 0) continue;
      CAPTURE(n);
      const std::vector<uint8_t> w = RandomBlocks(type, n, static_cast<uint32_t>(n));
      std::vector<float> x(n), deq(n);
      for (float& v : x) v = gauss(rng);
      dequantize_row(type, w.data(), deq.data(), n);
      double ref = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        ref += static_cast<double>(deq[i]) * x[i];
        mag += std::fabs(static_cast<double>(deq[i]) * x[i]);
      }
      const float got = dot_row(type, w.data(), x.data(), n);
      CHECK(std::isfinite(got));
      CHECK(std::fabs(got - ref) <= 1e-6 * mag + 1e-30);
      CHECK(quant_ops(type)->dot(w.data(), x.data(), n) == got);
    }
  }
}

TEST_CASE("types the model never uses have no routines") {
  CHECK_FALSE(quant_supported(GgmlType::Q4_0));
  CHECK_FALSE(quant_supported(GgmlType::Q8_K));
  CHECK_FALSE(quant_supported(GgmlType::MXFP4));
  CHECK(quant_ops(GgmlType::Q6_K) == nullptr);
  CHECK(quant_ops(GgmlType::IQ2_XXS)->type == GgmlType::IQ2_XXS);
}

}  // namespace ds4
