// SmokeStage: proves the built engine answers before anything is installed as a service.
// Checks come from manifests/smoke.yaml, per model: the France question in non-thinking
// mode at temperature 0 through the ds4 CLI, the same after a long preamble (past the
// 128-token window, where a build for the wrong GPU architecture goes wrong), and through
// POST /v1/chat/completions. Every answer is printed; the first failing check stops the
// install with the answer shown (exit code kExitSmoke).
//
// The HTTP check runs against the service after it starts (--start: RunHttpChecks from
// the service stage), or else against a temporary server on a free port. Passing checks
// are recorded in the install state: a re-run with the same engine build, model and
// checks skips the CLI checks.
//
// Thread-safety: runs programs; one thread.
#pragma once

#include <string>
#include <vector>

#include "install_state.h"
#include "pipeline.h"
#include "status.h"

namespace ds4setup {

struct SmokeCheck {
  std::string name;
  std::string via = "cli";   // "cli" or "http"
  std::string preamble;      // text before the question (long-prompt check)
  std::string question;
  std::string expect;        // the answer must contain it
  int max_tokens = 64;

  // preamble + blank line + question, or the question alone.
  std::string Prompt() const;
};

struct SmokeSpec {
  std::string model;
  double timeout_seconds = 600;  // per check
  std::vector<SmokeCheck> checks;
  std::string fingerprint;       // SHA-256 of the checks (changes re-run them)
};

// The checks for `model` in the smoke manifest at `path`; errors name the file, model
// and field at fault.
Result<SmokeSpec> LoadSmokeSpec(const std::string& path, const std::string& model);
Result<SmokeSpec> ParseSmokeSpec(const std::string& yaml_text, const std::string& origin,
                                 const std::string& model);

struct SmokeAnswer {
  std::string answer;   // what the model said (trimmed)
  bool passed = false;  // answer contains check.expect
  double seconds = 0;
};

// Runs `ds4 -m MODEL -p PROMPT --nothink --temp 0 -n N --backend BACKEND`. An error
// Status when the program fails (its stderr quoted), else the answer.
Result<SmokeAnswer> RunCliCheck(const std::string& ds4_binary, const std::string& model_path,
                                const std::string& backend, const SmokeCheck& check,
                                double timeout_seconds);

// POSTs the question to <base_url>/v1/chat/completions (thinking disabled, temperature 0).
Result<SmokeAnswer> RunHttpCheck(const std::string& base_url, const SmokeCheck& check,
                                 double timeout_seconds);

// Runs the spec's HTTP checks against a running server; prints each answer.
Status RunHttpChecks(Context& context, const SmokeSpec& spec, const std::string& base_url);

// The smoke spec for context's model, from <manifests_dir>/smoke.yaml.
Result<SmokeSpec> SmokeSpecFor(const Context& context);

// The key recorded when all checks passed: engine version / model sha256 / checks.
std::string SmokeKey(const std::string& engine_version, const std::string& model_sha256,
                     const SmokeSpec& spec);

Status SmokeStage(Context& context);

}  // namespace ds4setup
