#include "install_state.h"

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace ds4setup {

std::string UtcTimestampNow() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}


namespace {

using nlohmann::json;

template <typename T>
void Get(const json& object, const char* key, T* value) {
  if (object.contains(key) && !object[key].is_null()) *value = object[key].get<T>();
}

}  // namespace

std::string InstallStatePath(const std::string& prefix) { return prefix + "/install-state.json"; }

Result<InstallState> LoadInstallState(const std::string& prefix) {
  const std::string path = InstallStatePath(prefix);
  std::ifstream file(path);
  if (!file) return Status::Error("nothing is installed in " + prefix + " (no " + path + ")");
  std::stringstream text;
  text << file.rdbuf();
  json object = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded() || !object.is_object()) {
    return Status::Error(path + " is not valid JSON; remove it or re-run ds4-setup install");
  }
  InstallState state;
  state.prefix = prefix;
  try {
    Get(object, "installed_at", &state.installed_at);
    Get(object, "setup_version", &state.setup_version);
    Get(object, "model_name", &state.model_name);
    Get(object, "model_path", &state.model_path);
    Get(object, "model_sha256", &state.model_sha256);
    Get(object, "mtp_path", &state.mtp_path);
    Get(object, "mtp_sha256", &state.mtp_sha256);
    Get(object, "models_dir", &state.models_dir);
    Get(object, "smoke_key", &state.smoke_key);
    Get(object, "smoke_passed_at", &state.smoke_passed_at);
    Get(object, "service_mode", &state.service_mode);
    Get(object, "unit_path", &state.unit_path);
    Get(object, "rendered_unit", &state.rendered_unit);
    Get(object, "user_created", &state.user_created);
    Get(object, "service_user", &state.service_user);
    Get(object, "host", &state.host);
    Get(object, "port", &state.port);
    Get(object, "ctx", &state.ctx);
    Get(object, "pid_file", &state.pid_file);
    Get(object, "server_log", &state.server_log);
    Get(object, "kv_dir", &state.kv_dir);
    Get(object, "service_fingerprint", &state.service_fingerprint);
  } catch (const json::exception& e) {
    return Status::Error(path + ": a field has the wrong type (" + e.what() + ")");
  }
  return state;
}

Status SaveInstallState(const InstallState& state) {
  json object = {{"installed_at", state.installed_at},
                 {"setup_version", state.setup_version},
                 {"model_name", state.model_name},
                 {"model_path", state.model_path},
                 {"model_sha256", state.model_sha256},
                 {"mtp_path", state.mtp_path},
                 {"mtp_sha256", state.mtp_sha256},
                 {"models_dir", state.models_dir},
                 {"smoke_key", state.smoke_key},
                 {"smoke_passed_at", state.smoke_passed_at},
                 {"service_mode", state.service_mode},
                 {"unit_path", state.unit_path},
                 {"rendered_unit", state.rendered_unit},
                 {"user_created", state.user_created},
                 {"service_user", state.service_user},
                 {"host", state.host},
                 {"port", state.port},
                 {"ctx", state.ctx},
                 {"pid_file", state.pid_file},
                 {"server_log", state.server_log},
                 {"kv_dir", state.kv_dir},
                 {"service_fingerprint", state.service_fingerprint}};
  const std::string path = InstallStatePath(state.prefix);
  std::error_code ec;
  std::filesystem::create_directories(state.prefix, ec);
  const std::string temp = path + ".tmp";
  {
    std::ofstream file(temp, std::ios::trunc);
    file << object.dump(2) << "\n";
    if (!file.good()) return Status::Error("cannot write " + temp);
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) return Status::Error("cannot replace " + path);
  return Status::Ok();
}

}  // namespace ds4setup
