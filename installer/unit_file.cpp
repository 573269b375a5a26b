#include "unit_file.h"

#include <fstream>
#include <sstream>

namespace ds4setup {
namespace {

bool IsAbsolute(const std::string& path) { return !path.empty() && path[0] == '/'; }

bool IsUnder(const std::string& path, const std::string& dir) {
  return path == dir || path.rfind(dir + "/", 0) == 0;
}

// "yes" hides /home, /root and /run/user from the service; a model or KV directory
// under one of them needs "read-only" (the service must still read the model; the
// KV dir stays writable through ReadWritePaths).
std::string ProtectHomeValue(const UnitConfig& config) {
  for (const std::string* path : {&config.model_path, &config.mtp_path, &config.kv_dir,
                                  &config.server_binary}) {
    for (const char* home : {"/home", "/root", "/run/user"}) {
      if (IsUnder(*path, home)) return "read-only";
    }
  }
  return "yes";
}

std::string JoinSpaced(const std::vector<std::string>& items) {
  std::string joined;
  for (const std::string& item : items) {
    if (!joined.empty()) joined += ' ';
    joined += item;
  }
  return joined;
}

}  // namespace

std::string SystemdQuote(const std::string& arg) {
  std::string escaped;
  bool needs_quotes = arg.empty();
  for (char c : arg) {
    switch (c) {
      case '%': escaped += "%%"; break;
      case '$': escaped += "$$"; break;
      case '\\': escaped += "\\\\"; needs_quotes = true; break;
      case '"': escaped += "\\\""; needs_quotes = true; break;
      case ' ': case '\t': case '\'': case ';': escaped += c; needs_quotes = true; break;
      default: escaped += c;
    }
  }
  return needs_quotes ? "\"" + escaped + "\"" : escaped;
}

std::string ExecStartLine(const UnitConfig& config) {
  std::vector<std::string> args = {config.server_binary, "-m", config.model_path};
  if (!config.mtp_path.empty()) {
    args.push_back("--mtp");
    args.push_back(config.mtp_path);
  }
  args.push_back("--host");
  args.push_back(config.host);
  args.push_back("--port");
  args.push_back(std::to_string(config.port));
  if (config.ctx > 0) {
    args.push_back("--ctx");
    args.push_back(std::to_string(config.ctx));
  }
  std::string line;
  for (const std::string& arg : args) {
    if (!line.empty()) line += ' ';
    line += SystemdQuote(arg);
  }
  return line;
}

Result<std::map<std::string, std::string>> UnitValues(const UnitConfig& config) {
  struct NamedPath {
    const char* what;
    const std::string* path;
  };
  for (NamedPath p : {NamedPath{"ds4-server binary", &config.server_binary},
                      NamedPath{"model file", &config.model_path},
                      NamedPath{"KV directory", &config.kv_dir}}) {
    if (!IsAbsolute(*p.path)) {
      return Status::Error(std::string("unit file: the ") + p.what +
                           " path must be absolute, got '" + *p.path + "'");
    }
  }
  if (!config.mtp_path.empty() && !IsAbsolute(config.mtp_path)) {
    return Status::Error("unit file: the MTP model path must be absolute, got '" +
                         config.mtp_path + "'");
  }
  if (config.port < 1 || config.port > 65535) {
    return Status::Error("unit file: port " + std::to_string(config.port) +
                         " is outside 1..65535");
  }
  if (config.ctx < 0) {
    return Status::Error("unit file: context length " + std::to_string(config.ctx) +
                         " is negative");
  }
  if (config.host.empty() || config.host.find_first_of(" \t\n\"'") != std::string::npos) {
    return Status::Error("unit file: invalid host address '" + config.host + "'");
  }
  if (config.user.empty() || config.group.empty()) {
    return Status::Error("unit file: the service user and group must be named");
  }
  std::map<std::string, std::string> values;
  values["HOST"] = config.host;
  values["PORT"] = std::to_string(config.port);
  values["USER"] = config.user;
  values["GROUP"] = config.group;
  values["GPU_GROUPS"] = JoinSpaced(config.gpu_groups);
  values["EXEC_START"] = ExecStartLine(config);
  values["KV_DIR"] = SystemdQuote(config.kv_dir);
  values["PROTECT_HOME"] = ProtectHomeValue(config);
  values["DOC_PATH"] = config.doc_path;
  return values;
}

Result<std::string> RenderTemplate(const std::string& template_text,
                                   const std::map<std::string, std::string>& values,
                                   const std::string& origin) {
  std::istringstream lines(template_text);
  std::string rendered;
  int line_number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_number;
    if (!line.empty() && (line[0] == '#' || line[0] == ';')) {  // comments stay as written
      rendered += line + "\n";
      continue;
    }
    std::string out;
    bool had_placeholder = false;
    bool any_value = false;
    size_t pos = 0;
    while (true) {
      size_t open = line.find("{{", pos);
      if (open == std::string::npos) {
        out += line.substr(pos);
        break;
      }
      size_t close = line.find("}}", open + 2);
      if (close == std::string::npos) {
        return Status::Error(origin + ":" + std::to_string(line_number) +
                             ": unclosed '{{' placeholder");
      }
      std::string name = line.substr(open + 2, close - open - 2);
      auto value = values.find(name);
      if (value == values.end()) {
        return Status::Error(origin + ":" + std::to_string(line_number) +
                             ": unknown placeholder {{" + name + "}}");
      }
      had_placeholder = true;
      if (!value->second.empty()) any_value = true;
      out += line.substr(pos, open - pos) + value->second;
      pos = close + 2;
    }
    if (had_placeholder && !any_value) continue;  // an optional setting with no value
    rendered += out + "\n";
  }
  return rendered;
}

Result<std::string> RenderUnitFile(const std::string& template_path, const UnitConfig& config) {
  std::ifstream file(template_path);
  if (!file) return Status::Error("cannot read the unit template " + template_path);
  std::stringstream text;
  text << file.rdbuf();
  Result<std::map<std::string, std::string>> values = UnitValues(config);
  if (!values.ok()) return values.status();
  return RenderTemplate(text.str(), *values, template_path);
}

}  // namespace ds4setup
