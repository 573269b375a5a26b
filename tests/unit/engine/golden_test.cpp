// Golden fixtures (shared/fixtures/README.md §4): the CPU backend reproduces the
// official model's logits on tiny-fast and tiny-real, for the qat (real model) and off
// variants, in one full prefill, in chunked prefill with chunk sizes that are not
// multiples of the compression ratios, and token by token, followed by the
// teacher-forced decode steps.
#include <doctest/doctest.h>

#include <string>

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
