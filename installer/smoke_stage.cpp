#include "smoke_stage.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "build_stage.h"
#include "http_check.h"
#include "install_state.h"
#include "proc.h"
#include "sha256.h"

namespace fs = std::filesystem;

namespace ds4setup {
namespace {

std::string Trim(const std::string& text) {
  size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  size_t end = text.find_last_not_of(" \t\r\n");
  return text.substr(begin, end - begin + 1);
}

std::string Seconds(double seconds) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f s", seconds);
  return text;
}

// "'france': The capital of France is Paris. (contains "Paris", 1.2 s)"
std::string Report(const SmokeCheck& check, const SmokeAnswer& answer) {
  return "smoke '" + check.name + "' answered: " + answer.answer + "  [contains \"" + check.expect +
         "\", " + Seconds(answer.seconds) + "]";
}

Status Failed(Context& context, const SmokeCheck& check, const std::string& why) {
  context.exit_code = kExitSmoke;
  return Status::Error("smoke check '" + check.name + "' failed: " + why);
}

Status CheckAnswer(Context& context, const SmokeCheck& check, const SmokeAnswer& answer) {
  if (!answer.passed) {
    return Failed(context, check,
                  "the answer does not contain \"" + check.expect + "\". The model answered: \"" +
                      answer.answer + "\"");
  }
  context.ui->Info(Report(check, answer));
  return Status::Ok();
}

std::string Backend(const Context& context) { return context.profile.needs_gpu ? "cuda" : "cpu"; }

std::string ModelSha256(const Context& context) {
  for (const ModelArtifact& artifact : context.artifacts) {
    if (artifact.kind != "draft") return artifact.sha256;
  }
  return "";
}

bool HasHttpChecks(const SmokeSpec& spec) {
  for (const SmokeCheck& check : spec.checks) {
    if (check.via == "http") return true;
  }
  return false;
}

// Starts ds4-server on a free loopback port, runs the HTTP checks, stops it.
Status RunHttpChecksOnTemporaryServer(Context& context, const SmokeSpec& spec) {
  Result<int> port = PickFreePort();
  if (!port.ok()) return port.status();
  const fs::path prefix(context.options.prefix);
  std::error_code ec;
  fs::create_directories(prefix / "logs", ec);
  fs::create_directories(prefix / "run", ec);
  const std::string log = (prefix / "logs" / "smoke-server.log").string();
  const std::string pid_file = (prefix / "run" / "smoke-server.pid").string();
  std::vector<std::string> argv = {context.bin_dir + "/ds4-server", "-m", context.model_path,
                                   "--host", "127.0.0.1", "--port", std::to_string(*port)};
  if (!context.mtp_path.empty()) {
    argv.push_back("--mtp");
    argv.push_back(context.mtp_path);
  }
  context.ui->Info("starting a temporary ds4-server on 127.0.0.1:" + std::to_string(*port) +
                   " for the chat API check (log: " + log + ")");
  Result<pid_t> pid = StartDetached(argv, log, pid_file);
  if (!pid.ok()) {
    context.exit_code = kExitSmoke;
    return pid.status();
  }
  Status status = WaitForServer("127.0.0.1", *port, spec.timeout_seconds, *pid, log);
  if (status.ok()) status = RunHttpChecks(context, spec, BaseUrl("127.0.0.1", *port));
  Status stopped = StopProcess(*pid, 15);
  fs::remove(pid_file, ec);
  if (!status.ok()) {
    context.exit_code = kExitSmoke;
    return status;
  }
  return stopped;
}

}  // namespace

std::string SmokeCheck::Prompt() const {
  return preamble.empty() ? question : preamble + "\n\n" + question;
}

Result<SmokeSpec> ParseSmokeSpec(const std::string& yaml_text, const std::string& origin,
                                 const std::string& model) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return Status::Error(origin + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap() || !root["models"] || !root["models"].IsMap()) {
    return Status::Error(origin + ": expected a top-level 'models' map");
  }
  YAML::Node entry = root["models"][model];
  if (!entry || !entry.IsMap()) {
    return Status::Error(origin + ": no smoke checks for model '" + model + "'");
  }
  const std::string where = origin + ": models." + model;
  SmokeSpec spec;
  spec.model = model;
  try {
    if (entry["timeout_seconds"]) spec.timeout_seconds = entry["timeout_seconds"].as<double>();
    YAML::Node checks = entry["checks"];
    if (!checks || !checks.IsSequence() || checks.size() == 0) {
      return Status::Error(where + ": 'checks' must be a non-empty list");
    }
    for (size_t i = 0; i < checks.size(); ++i) {
      const YAML::Node& node = checks[i];
      SmokeCheck check;
      const std::string at = where + ".checks[" + std::to_string(i) + "]";
      if (!node.IsMap()) return Status::Error(at + ": expected a map");
      for (const char* required : {"name", "question", "expect"}) {
        if (!node[required] || node[required].as<std::string>().empty()) {
          return Status::Error(at + ": missing '" + required + "'");
        }
      }
      check.name = node["name"].as<std::string>();
      check.question = node["question"].as<std::string>();
      check.expect = node["expect"].as<std::string>();
      if (node["via"]) check.via = node["via"].as<std::string>();
      if (node["preamble"]) check.preamble = Trim(node["preamble"].as<std::string>());
      if (node["max_tokens"]) check.max_tokens = node["max_tokens"].as<int>();
      if (check.via != "cli" && check.via != "http") {
        return Status::Error(at + ": 'via' must be cli or http, not '" + check.via + "'");
      }
      if (check.max_tokens <= 0) return Status::Error(at + ": 'max_tokens' must be positive");
      spec.checks.push_back(check);
    }
  } catch (const YAML::Exception& e) {
    return Status::Error(where + ": " + e.what());
  }
  if (spec.timeout_seconds <= 0) return Status::Error(where + ": 'timeout_seconds' must be positive");

  Sha256 hash;
  for (const SmokeCheck& check : spec.checks) {
    std::string text = check.name + '\0' + check.via + '\0' + check.Prompt() + '\0' + check.expect +
                       '\0' + std::to_string(check.max_tokens) + '\0';
    hash.Update(text.data(), text.size());
  }
  spec.fingerprint = hash.FinalHex();
  return spec;
}

Result<SmokeSpec> LoadSmokeSpec(const std::string& path, const std::string& model) {
  std::ifstream file(path);
  if (!file) return Status::Error("cannot read the smoke manifest " + path);
  std::stringstream text;
  text << file.rdbuf();
  return ParseSmokeSpec(text.str(), path, model);
}

Result<SmokeAnswer> RunCliCheck(const std::string& ds4_binary, const std::string& model_path,
                                const std::string& backend, const SmokeCheck& check,
                                double timeout_seconds) {
  ProcOptions options;
  options.timeout_seconds = timeout_seconds;
  Result<ProcResult> run =
      RunProcess({ds4_binary, "-m", model_path, "-p", check.Prompt(), "--nothink", "--temp", "0",
                  "-n", std::to_string(check.max_tokens), "--backend", backend},
                 options);
  if (!run.ok()) return run.status();
  if (!run->ok()) {
    return Status::Error("ds4 " + std::string(run->timed_out ? "timed out" : "failed") + ": " +
                         run->Describe(20));
  }
  SmokeAnswer answer;
  answer.answer = Trim(run->out);
  answer.passed = answer.answer.find(check.expect) != std::string::npos;
  answer.seconds = run->seconds;
  return answer;
}

Result<SmokeAnswer> RunHttpCheck(const std::string& base_url, const SmokeCheck& check,
                                 double timeout_seconds) {
  nlohmann::json request = {
      {"model", "ds4"},
      {"messages", nlohmann::json::array({{{"role", "user"}, {"content", check.Prompt()}}})},
      {"max_tokens", check.max_tokens},
      {"temperature", 0},
      {"stream", false},
      {"thinking", {{"type", "disabled"}}}};
  const std::string url = base_url + "/v1/chat/completions";
  auto began = std::chrono::steady_clock::now();
  Result<HttpReply> reply = HttpRequest("POST", url, request.dump(), timeout_seconds);
  if (!reply.ok()) return reply.status();
  if (reply->code != 200) {
    return Status::Error("POST " + url + " answered HTTP " + std::to_string(reply->code) + ": " +
                         reply->body.substr(0, 500));
  }
  nlohmann::json body = nlohmann::json::parse(reply->body, nullptr, false);
  const nlohmann::json* content = nullptr;
  if (body.is_object() && body.contains("choices") && body["choices"].is_array() &&
      !body["choices"].empty() && body["choices"][0].contains("message") &&
      body["choices"][0]["message"].contains("content") &&
      body["choices"][0]["message"]["content"].is_string()) {
    content = &body["choices"][0]["message"]["content"];
  }
  if (content == nullptr) {
    return Status::Error("POST " + url + ": no choices[0].message.content in the reply: " +
                         reply->body.substr(0, 500));
  }
  SmokeAnswer answer;
  answer.answer = Trim(content->get<std::string>());
  answer.passed = answer.answer.find(check.expect) != std::string::npos;
  answer.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  return answer;
}

Status RunHttpChecks(Context& context, const SmokeSpec& spec, const std::string& base_url) {
  for (const SmokeCheck& check : spec.checks) {
    if (check.via != "http") continue;
    Result<SmokeAnswer> answer = RunHttpCheck(base_url, check, spec.timeout_seconds);
    if (!answer.ok()) return Failed(context, check, answer.status().message());
    DS4_RETURN_IF_ERROR(CheckAnswer(context, check, *answer));
  }
  return Status::Ok();
}

Result<SmokeSpec> SmokeSpecFor(const Context& context) {
  return LoadSmokeSpec(context.options.manifests_dir + "/smoke.yaml", context.options.model);
}

std::string SmokeKey(const std::string& engine_version, const std::string& model_sha256,
                     const SmokeSpec& spec) {
  return engine_version + "/" + model_sha256 + "/" + spec.fingerprint.substr(0, 16);
}

Status SmokeStage(Context& context) {
  Result<SmokeSpec> spec = SmokeSpecFor(context);
  if (!spec.ok()) {
    context.exit_code = kExitSmoke;
    return spec.status();
  }
  const std::string prefix = context.options.prefix;
  const std::string key = SmokeKey(CurrentEngineVersion(prefix), ModelSha256(context), *spec);
  Result<InstallState> loaded = LoadInstallState(prefix);
  InstallState state = loaded.ok() ? *loaded : InstallState{};
  state.prefix = prefix;
  if (loaded.ok() && state.smoke_key == key) {
    context.ui->Info("smoke checks passed on " + state.smoke_passed_at +
                     " for this engine build and model: skipped");
    return Status::Ok();
  }

  const std::string ds4 = context.bin_dir + "/ds4";
  for (const SmokeCheck& check : spec->checks) {
    if (check.via != "cli") continue;
    context.ui->Info("smoke '" + check.name + "': asking \"" + check.question + "\"" +
                     (check.preamble.empty() ? "" : " after a " + std::to_string(check.preamble.size()) +
                                                        "-character preamble"));
    Result<SmokeAnswer> answer =
        RunCliCheck(ds4, context.model_path, Backend(context), check, spec->timeout_seconds);
    if (!answer.ok()) return Failed(context, check, answer.status().message());
    context.ui->Log("smoke '" + check.name + "' full answer: " + answer->answer);
    DS4_RETURN_IF_ERROR(CheckAnswer(context, check, *answer));
  }
  if (HasHttpChecks(*spec)) {
    if (context.options.start) {
      context.ui->Info("the chat API check runs once the service has started");
    } else {
      DS4_RETURN_IF_ERROR(RunHttpChecksOnTemporaryServer(context, *spec));
    }
  }
  state.smoke_key = key;
  state.smoke_passed_at = UtcTimestampNow();
  return SaveInstallState(state);
}

}  // namespace ds4setup
