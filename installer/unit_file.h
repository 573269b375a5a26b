// UnitFile: renders systemd/ds4.service (a template with {{NAME}} placeholders) into the
// unit that runs ds4-server: absolute paths, the dedicated user, the GPU groups, the
// flags --host/--port/--ctx/--with-mtp chose, and the hardening settings.
//
// Rendering rules: every {{NAME}} must have a value in UnitValues (an unknown name is an
// error naming it and its line); a line whose placeholders all render empty is left out
// (e.g. SupplementaryGroups when the host has no video/render group); comment lines
// ('#' or ';' first) are copied as written.
//
// Thread-safety: pure functions.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "status.h"

namespace ds4setup {

// What the rendered unit runs and where.
struct UnitConfig {
  std::string server_binary;            // absolute path of ds4-server
  std::string model_path;               // absolute path of the main GGUF
  std::string mtp_path;                 // absolute path of the MTP GGUF; empty = no MTP
  std::string host = "127.0.0.1";
  int port = 8000;
  int ctx = 0;                          // 0 = the engine's default (no --ctx)
  std::string user = "ds4";
  std::string group = "ds4";
  std::vector<std::string> gpu_groups;  // e.g. {"video", "render"}: those that exist
  std::string kv_dir;                   // the only writable path (KV cache files)
  std::string doc_path;                 // absolute path of docs/install.md
};

// The ExecStart line's value: ds4-server and its flags, quoted for systemd.
std::string ExecStartLine(const UnitConfig& config);

// The placeholder values UnitConfig gives. Fails when a path is not absolute or a
// value is out of range (names which).
Result<std::map<std::string, std::string>> UnitValues(const UnitConfig& config);

// Fills `template_text`'s placeholders from `values` (rules above). `origin` names the
// template in errors.
Result<std::string> RenderTemplate(const std::string& template_text,
                                   const std::map<std::string, std::string>& values,
                                   const std::string& origin);

// Reads the template at `template_path` and renders it for `config`.
Result<std::string> RenderUnitFile(const std::string& template_path, const UnitConfig& config);

// Quotes one ExecStart argument the way systemd parses it ("..." with \ escapes,
// % as %%, $ as $$).
std::string SystemdQuote(const std::string& arg);

}  // namespace ds4setup
