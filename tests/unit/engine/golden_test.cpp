// Golden fixtures (shared/fixtures/README.md §4): the CPU backend reproduces the
// official model's logits on tiny-fast and tiny-real, for the qat (real model) and off
// variants, in one full prefill, in chunked prefill with chunk sizes that are not
// multiples of the compression ratios, and token by token, followed by the
// teacher-forced decode steps.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/golden.h"

namespace {

std::string data_path(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

void check_fixture(const std::string& fixture, const std::string& variant) {
  ds4::GoldenOptions o;
  o.fixture_dir = data_path(fixture);
  o.variants = {variant};
  o.modes = {0, 7, 61, 512, 1};
  o.debug = true;
  auto report = ds4::run_golden(o);
  REQUIRE_MESSAGE(report.ok(), report.status().message());
  MESSAGE(report->summary());
  std::string details;
  for (const std::string& line : report->details) details += line + "\n";
  INFO(details);
  for (const std::string& line : report->details) {
    CHECK_MESSAGE(line.find("MISMATCH") == std::string::npos, line);
    CHECK_MESSAGE(line.find("first mismatch") == std::string::npos, line);
  }
  CHECK(report->runs.size() == 5);
  for (const ds4::GoldenRun& run : report->runs) {
    CHECK_MESSAGE(run.passed(), fixture << " " << run.variant << " " << run.mode_name());
    CHECK(run.prefill.positions > 0);
    CHECK(run.decode.positions == 24);
  }
  CHECK(report->tokenizer_checked);
  CHECK(report->tokenizer_ok);
  CHECK(report->passed());
  const std::string summary = report->summary();
  CHECK(summary.substr(summary.size() - 4) == "PASS");
}

}  // namespace

TEST_CASE("tiny-fast qat: all modes PASS") { check_fixture("tiny-fast", "qat"); }
TEST_CASE("tiny-fast off: all modes PASS") { check_fixture("tiny-fast", "off"); }
TEST_CASE("tiny-real qat: all modes PASS") { check_fixture("tiny-real", "qat"); }
TEST_CASE("tiny-real off: all modes PASS") { check_fixture("tiny-real", "off"); }

TEST_CASE("the checker fails when the engine is wrong: a fixture's goldens against another model") {
  // tiny-real's model has the same sizes as tiny-fast but other weights and ratios:
  // its logits must not pass tiny-fast's goldens.
  ds4::GoldenOptions o;
  o.fixture_dir = data_path("tiny-fast");
  o.model_path = data_path("tiny-real/model.gguf");
  o.variants = {"qat"};
  o.modes = {0};
  o.check_tokenizer = false;
  auto report = ds4::run_golden(o);
  REQUIRE_MESSAGE(report.ok(), report.status().message());
  CHECK_FALSE(report->passed());
  const std::string summary = report->summary();
  CHECK(summary.substr(summary.size() - 4) == "FAIL");
}

TEST_CASE("a variant the fixture lacks is skipped; with none left the check fails") {
  ds4::GoldenOptions o;
  o.fixture_dir = data_path("tiny-fast");
  o.variants = {"fp64"};
  o.modes = {0};
  auto report = ds4::run_golden(o);
  REQUIRE_MESSAGE(report.ok(), report.status().message());
  CHECK(report->runs.empty());
  CHECK_FALSE(report->passed());
  REQUIRE_FALSE(report->details.empty());
  CHECK(report->details[0].find("fp64") != std::string::npos);
}

TEST_CASE("a missing fixture folder is a clear error") {
  ds4::GoldenOptions o;
  o.fixture_dir = data_path("no-such-fixture");
  auto report = ds4::run_golden(o);
  REQUIRE_FALSE(report.ok());
  CHECK(report.status().message().find("no-such-fixture") != std::string::npos);
}

TEST_CASE("the MTP draft logits are checked when the fixture has an MTP file") {
  ds4::GoldenOptions o;
  o.fixture_dir = data_path("tiny-fast");
  o.variants = {"off"};
  o.modes = {0};
  auto report = ds4::run_golden(o);
  REQUIRE_MESSAGE(report.ok(), report.status().message());
  REQUIRE(report->runs.size() == 1);
  CHECK(report->runs[0].mtp.positions == 60);
  CHECK(report->runs[0].mtp.passed());
  CHECK(report->summary().find("mtp:") != std::string::npos);
  CHECK(report->passed());
}

// tiny-chat (head dim 512 as in the real model: seven FP8 blocks per KV row): the
// official model's logits at the last position of the France prompt, QAT on and off.
TEST_CASE("tiny-chat: France prompt last-position logits match the official model") {
  std::ifstream in(data_path("tiny-chat/golden.json"));
  REQUIRE(in.good());
  const nlohmann::json g = nlohmann::json::parse(in);
  auto model = ds4::Model::Load(data_path("tiny-chat/model.gguf"));
  REQUIRE_MESSAGE(model.ok(), model.status().message());
  const int32_t vocab = (*model)->config().vocab;
  for (const std::string mode : {"nothink", "think"}) {
    const nlohmann::json& info = g["logits"][mode];
    std::vector<int32_t> ids;
    for (const auto& c : g["cases"]) {
      if (c["id"] == info["case"]) ids = c["prompt_ids"].get<std::vector<int32_t>>();
    }
    REQUIRE(!ids.empty());
    REQUIRE(static_cast<int32_t>(ids.size()) == info["position"].get<int32_t>() + 1);
    for (const bool qat : {true, false}) {
      std::ifstream bin(data_path("tiny-chat/" + info[qat ? "qat_on" : "qat_off"].get<std::string>()), std::ios::binary);
      std::vector<float> golden(vocab);
      REQUIRE(bin.read(reinterpret_cast<char*>(golden.data()), vocab * sizeof(float)));
      ds4::BackendOptions o;
      o.qat = qat;
      auto backend = ds4::make_backend(**model, ds4::BackendKind::kCpu, o);
      REQUIRE(backend.ok());
      auto seq = (*backend)->new_sequence(64);
      std::vector<ds4::BatchToken> batch;
      for (size_t p = 0; p < ids.size(); ++p) {
        batch.push_back({ids[p], *seq, static_cast<int32_t>(p), p + 1 == ids.size(), false});
      }
      ds4::ForwardOutput out;
      REQUIRE((*backend)->forward(batch, &out).ok());
      REQUIRE(out.logits.size() == golden.size());
      double max_abs = 0;
      size_t arg = 0;
      for (size_t i = 0; i < golden.size(); ++i) {
        max_abs = std::max(max_abs, std::fabs(double(out.logits[i]) - golden[i]));
        if (out.logits[i] > out.logits[arg]) arg = i;
      }
      const double std_dev = info["std"].get<double>();
      CHECK_MESSAGE(max_abs <= 1e-3 * std_dev, mode << (qat ? " qat" : " off") << ": max |dlogit| " << max_abs);
      CHECK(static_cast<int32_t>(arg) == info["argmax"].get<int32_t>());
    }
  }
}
