// InstallState: what `ds4-setup install` set up, recorded in <prefix>/install-state.json
// so that `status` can report on it and `uninstall` removes exactly what install created
// (and nothing it found already there: a service user that existed before; with
// --purge-models only the recorded model files, and their folder if that is then empty).
//
// Thread-safety: plain value; Load/Save touch one file, from one thread.
#pragma once

#include <string>
#include <vector>

#include "status.h"

namespace ds4setup {

struct InstallState {
  std::string prefix;
  std::string installed_at;      // UTC, of the last successful install
  std::string setup_version;     // ds4-setup's version

  // Model files (verified by SHA-256 when they were installed).
  std::string model_name;
  std::string model_path;
  std::string model_sha256;
  std::string mtp_path;
  std::string mtp_sha256;
  std::string models_dir;

  // Smoke checks that passed for <engine version>/<model sha256>/<checks hash>.
  std::string smoke_key;
  std::string smoke_passed_at;

  // The service.
  std::string service_mode;      // "systemd", "detached" or "" (not installed)
  std::string unit_path;         // /etc/systemd/system/ds4.service (systemd mode)
  std::string rendered_unit;     // <prefix>/etc/ds4.service (always written)
  bool user_created = false;     // the ds4 user was created by install
  std::string service_user;
  std::string host = "127.0.0.1";
  int port = 8000;
  int ctx = 0;
  std::string pid_file;          // detached mode
  std::string server_log;        // detached mode
  std::string kv_dir;
  // What the running service was started with (ExecStart line + engine version): when a
  // re-install renders the same, the running service is left alone.
  std::string service_fingerprint;
};

std::string InstallStatePath(const std::string& prefix);

// The current time as the records write it: ISO 8601 UTC, e.g. 2026-11-29T10:24:04Z.
std::string UtcTimestampNow();

// An error saying nothing is installed there when the file does not exist.
Result<InstallState> LoadInstallState(const std::string& prefix);

// Writes the file atomically (temp file + rename).
Status SaveInstallState(const InstallState& state);

}  // namespace ds4setup
