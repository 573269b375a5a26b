// Loader check (fixtures/README.md §4, check 1): every tensor of the tiny-fast and
// tiny-real model.gguf / mtp.gguf dequantizes to the statistics in dequant_check.json
// (sum, sum of squares, max |value| and sample values; relative 1e-6).
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "format/quant.h"

#if __has_include(<nlohmann/json.hpp>)
#include <nlohmann/json.hpp>

namespace ds4 {
namespace {

std::string DataPath(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

bool Close(double got, double expected, double rel = 1e-6) {
  return std::fabs(got - expected) <= rel * std::fabs(expected) + 1e-12;
}

struct Stats {
  double sum = 0, sum_sq = 0, max_abs = 0;
};

// Dequantizes the whole tensor in file order, row by row.
std::vector<float> Dequantize(const GgufTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.n_elements()));
  for (int64_t r = 0; r < t.n_rows(); ++r) {
    dequantize_row(t.type, t.row(r), out.data() + r * t.ne[0], t.ne[0]);
  }
  return out;
}

Stats Measure(const std::vector<float>& v) {
  Stats s;
  for (float f : v) {
    s.sum += f;
    s.sum_sq += static_cast<double>(f) * f;
    s.max_abs = std::max(s.max_abs, std::fabs(static_cast<double>(f)));
  }
  return s;
}

void CheckFile(const std::string& fixture, const std::string& file_name,
               const nlohmann::json& expected_tensors) {
  auto opened = GgufFile::Open(DataPath(fixture + "/" + file_name));
  REQUIRE_MESSAGE(opened.ok(), opened.status().message());
  const GgufFile& file = **opened;
  CHECK(expected_tensors.size() == file.tensors().size());
  int checked = 0;
  for (const auto& item : expected_tensors.items()) {
    const std::string name = item.key();
    const nlohmann::json& want = item.value();
    CAPTURE(fixture);
    CAPTURE(file_name);
    CAPTURE(name);
    const GgufTensor* t = file.tensor(name);
    REQUIRE_MESSAGE(t != nullptr, "tensor missing from the file");
    CHECK(ggml_type_name(t->type) == want.at("type").get<std::string>());
    CHECK(t->ne == want.at("ne").get<std::vector<int64_t>>());
    REQUIRE(quant_supported(t->type));

    const std::vector<float> values = Dequantize(*t);
    const Stats got = Measure(values);
    const double sum = want.at("sum").get<double>();
    const double sum_sq = want.at("sum_sq").get<double>();
    const double max_abs = want.at("max_abs").get<double>();
    CHECK_MESSAGE(Close(got.sum, sum), "sum " << got.sum << " vs " << sum);
    CHECK_MESSAGE(Close(got.sum_sq, sum_sq), "sum_sq " << got.sum_sq << " vs " << sum_sq);
    CHECK_MESSAGE(Close(got.max_abs, max_abs), "max_abs " << got.max_abs << " vs " << max_abs);
    const auto& samples = want.at("samples");
    CHECK(!samples.empty());
    for (const auto& sample : samples) {
      const int64_t index = sample.at(0).get<int64_t>();
      const double value = sample.at(1).get<double>();
      REQUIRE(index >= 0);
      REQUIRE(index < static_cast<int64_t>(values.size()));
      CHECK_MESSAGE(Close(values[index], value), "sample " << index << ": " << values[index]
                                                           << " vs " << value);
    }
    ++checked;
  }
  CHECK(checked == static_cast<int>(file.tensors().size()));
}

void CheckFixture(const std::string& fixture) {
  std::ifstream in(DataPath(fixture + "/dequant_check.json"));
  REQUIRE_MESSAGE(in.good(), "cannot read " << fixture << "/dequant_check.json");
  const nlohmann::json doc = nlohmann::json::parse(in);
  CHECK(doc.at("format").get<std::string>() == "ds4-tiny-fixture-v1-dequant");
  const auto& tensors = doc.at("tensors");
  REQUIRE(tensors.contains("model.gguf"));
  REQUIRE(tensors.contains("mtp.gguf"));
  CheckFile(fixture, "model.gguf", tensors.at("model.gguf"));
  CheckFile(fixture, "mtp.gguf", tensors.at("mtp.gguf"));
}

}  // namespace

TEST_CASE("tiny-fast: every tensor dequantizes to dequant_check.json") { CheckFixture("tiny-fast"); }

TEST_CASE("tiny-real: every tensor dequantizes to dequant_check.json") { CheckFixture("tiny-real"); }

}  // namespace ds4

#else

TEST_CASE("dequant check needs nlohmann-json") {
  FAIL("nlohmann-json (Debian: nlohmann-json3-dev) is not installed; the dequant check cannot run");
}

#endif
