#include "manifest.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace ds4setup {
namespace {

Result<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot open " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool IsLowerHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!std::isxdigit(static_cast<unsigned char>(c)) || std::isupper(static_cast<unsigned char>(c)))
      return false;
  }
  return true;
}

// Reads one scalar of type T from node[key]; `where` names the entry for messages.
template <typename T>
Status ReadScalar(const YAML::Node& node, const std::string& key, const std::string& where,
                  bool required, T* out) {
  YAML::Node value = node[key];
  if (!value) {
    if (required) return Status::Error(where + ": missing key '" + key + "'");
    return Status::Ok();
  }
  try {
    *out = value.as<T>();
  } catch (const YAML::Exception& e) {
    return Status::Error(where + ": key '" + key + "' has the wrong type (" + e.what() + ")");
  }
  return Status::Ok();
}

Status ReadStringList(const YAML::Node& node, const std::string& key, const std::string& where,
                      std::vector<std::string>* out) {
  YAML::Node value = node[key];
  if (!value || value.IsNull()) return Status::Ok();
  if (!value.IsSequence()) return Status::Error(where + ": key '" + key + "' must be a list");
  for (const auto& item : value) {
    try {
      out->push_back(item.as<std::string>());
    } catch (const YAML::Exception& e) {
      return Status::Error(where + ": key '" + key + "' holds a non-string item");
    }
  }
  return Status::Ok();
}

Status ParseArtifact(const std::string& name, const YAML::Node& node, const std::string& where,
                     ModelArtifact* a) {
  if (!node.IsMap()) return Status::Error(where + ": must be a mapping");
  a->name = name;
  DS4_RETURN_IF_ERROR(ReadScalar(node, "description", where, false, &a->description));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "kind", where, false, &a->kind));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "repo", where, true, &a->repo));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "revision", where, true, &a->revision));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "file", where, true, &a->file));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "url", where, false, &a->url));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "bytes", where, true, &a->bytes));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "sha256", where, true, &a->sha256));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "supports_mtp", where, false, &a->supports_mtp));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "default", where, false, &a->is_default));
  if (a->kind != "base" && a->kind != "draft")
    return Status::Error(where + ": kind must be 'base' or 'draft', not '" + a->kind + "'");
  if (a->bytes == 0) return Status::Error(where + ": bytes must be > 0");
  if (!IsLowerHex64(a->sha256))
    return Status::Error(where + ": sha256 must be 64 lower-case hex digits, got '" + a->sha256 + "'");
  if (a->file.empty() || a->file.find('/') != std::string::npos || a->file[0] == '.')
    return Status::Error(where + ": file must be a plain file name, got '" + a->file + "'");
  return Status::Ok();
}

Status ParseProfile(const std::string& name, const YAML::Node& node, const std::string& where,
                    HostProfile* p) {
  if (!node.IsMap()) return Status::Error(where + ": must be a mapping");
  p->name = name;
  DS4_RETURN_IF_ERROR(ReadScalar(node, "description", where, false, &p->description));
  DS4_RETURN_IF_ERROR(ReadStringList(node, "arch", where, &p->arch));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "needs_gpu", where, true, &p->needs_gpu));
  DS4_RETURN_IF_ERROR(ReadStringList(node, "gpu_names", where, &p->gpu_names));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "compute_capability", where, false, &p->compute_capability));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "min_cuda", where, false, &p->min_cuda));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "min_ram_gib", where, false, &p->min_ram_gib));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "min_gpu_memory_gib", where, false, &p->min_gpu_memory_gib));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "disk_margin_gib", where, false, &p->disk_margin_gib));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "cuda_architectures", where, false, &p->cuda_architectures));
  DS4_RETURN_IF_ERROR(ReadScalar(node, "default_model", where, true, &p->default_model));
  if (p->needs_gpu && (p->gpu_names.empty() || p->compute_capability.empty() || p->min_cuda.empty()))
    return Status::Error(where + ": a GPU profile needs gpu_names, compute_capability and min_cuda");
  return Status::Ok();
}

// The key of a mapping entry as a string ("" when it is not a scalar).
std::string KeyName(const YAML::Node& key) {
  return key.IsScalar() ? key.Scalar() : std::string();
}

}  // namespace

const ModelArtifact* ModelManifest::Find(const std::string& name) const {
  for (const auto& m : models)
    if (m.name == name) return &m;
  return nullptr;
}

const ModelArtifact* ModelManifest::Default() const {
  for (const auto& m : models)
    if (m.is_default) return &m;
  return nullptr;
}

std::string ModelManifest::BaseNames() const {
  std::string names;
  for (const auto& m : models) {
    if (m.kind != "base") continue;
    if (!names.empty()) names += ", ";
    names += m.name;
  }
  return names;
}

Result<ModelManifest> ParseModelManifest(const std::string& yaml_text, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return Status::Error(origin + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap() || !root["models"] || !root["models"].IsMap())
    return Status::Error(origin + ": expected a top-level 'models' mapping");
  ModelManifest manifest;
  DS4_RETURN_IF_ERROR(ReadScalar(root, "draft", origin, false, &manifest.draft_name));
  for (const auto& entry : root["models"]) {
    ModelArtifact artifact;
    std::string name = KeyName(entry.first);
    if (name.empty()) return Status::Error(origin + ": a model name must be a plain string");
    DS4_RETURN_IF_ERROR(
        ParseArtifact(name, entry.second, origin + ": models." + name, &artifact));
    if (manifest.Find(name)) return Status::Error(origin + ": model '" + name + "' listed twice");
    manifest.models.push_back(std::move(artifact));
  }
  if (manifest.models.empty()) return Status::Error(origin + ": no models listed");
  if (!manifest.draft_name.empty()) {
    const ModelArtifact* draft = manifest.Find(manifest.draft_name);
    if (!draft || draft->kind != "draft")
      return Status::Error(origin + ": draft '" + manifest.draft_name +
                           "' is not a model of kind 'draft'");
  }
  return manifest;
}

Result<ModelManifest> LoadModelManifest(const std::string& path) {
  Result<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  return ParseModelManifest(*text, path);
}

Result<std::vector<ModelArtifact>> SelectArtifacts(const ModelManifest& manifest,
                                                   const std::string& model, bool with_mtp) {
  const ModelArtifact* base = model.empty() ? manifest.Default() : manifest.Find(model);
  if (!base) {
    return Status::Error("unknown model '" + model + "'; known models: " + manifest.BaseNames());
  }
  if (base->kind != "base") {
    return Status::Error("'" + base->name + "' is a draft model, not a base model; use --with-mtp "
                         "to add it to one of: " + manifest.BaseNames());
  }
  std::vector<ModelArtifact> files = {*base};
  if (!with_mtp) return files;
  if (!base->supports_mtp) {
    return Status::Error("--with-mtp cannot be used with model '" + base->name +
                         "': that checkpoint has no MTP head the draft model fits; drop "
                         "--with-mtp or choose a model that supports it");
  }
  const ModelArtifact* draft = manifest.Find(manifest.draft_name);
  if (!draft) return Status::Error("--with-mtp: the manifest names no draft model");
  files.push_back(*draft);
  return files;
}

std::string ArtifactUrl(const ModelArtifact& artifact, const std::string& endpoint,
                        const std::string& revision_override, const std::string& source_dir) {
  if (!artifact.url.empty()) {
    std::string url = artifact.url;
    const std::string key = "{source_dir}";
    for (size_t at = url.find(key); at != std::string::npos; at = url.find(key))
      url.replace(at, key.size(), source_dir);
    return url;
  }
  const std::string& revision = revision_override.empty() ? artifact.revision : revision_override;
  return endpoint + "/" + artifact.repo + "/resolve/" + revision + "/" + artifact.file;
}

const HostProfile* HostProfiles::Find(const std::string& name) const {
  for (const auto& p : profiles)
    if (p.name == name) return &p;
  return nullptr;
}

std::string HostProfiles::Names() const {
  std::string names;
  for (const auto& p : profiles) {
    if (!names.empty()) names += ", ";
    names += p.name;
  }
  return names;
}

Result<HostProfiles> ParseHostProfiles(const std::string& yaml_text, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return Status::Error(origin + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap() || !root["profiles"] || !root["profiles"].IsMap())
    return Status::Error(origin + ": expected a top-level 'profiles' mapping");
  HostProfiles hosts;
  for (const auto& entry : root["profiles"]) {
    HostProfile profile;
    std::string name = KeyName(entry.first);
    if (name.empty()) return Status::Error(origin + ": a profile name must be a plain string");
    DS4_RETURN_IF_ERROR(ParseProfile(name, entry.second, origin + ": profiles." + name, &profile));
    hosts.profiles.push_back(std::move(profile));
  }
  if (hosts.profiles.empty()) return Status::Error(origin + ": no profiles listed");
  return hosts;
}

Result<HostProfiles> LoadHostProfiles(const std::string& path) {
  Result<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  return ParseHostProfiles(*text, path);
}

int CompareVersions(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  while (sa.good() || sb.good()) {
    long x = 0, y = 0;
    std::string part;
    if (std::getline(sa, part, '.')) x = std::strtol(part.c_str(), nullptr, 10);
    if (std::getline(sb, part, '.')) y = std::strtol(part.c_str(), nullptr, 10);
    if (x != y) return x < y ? -1 : 1;
  }
  return 0;
}

}  // namespace ds4setup
