// Manifests: the pinned model artifacts (manifests/models.yaml) and the host profiles
// (manifests/hosts.yaml) ds4-setup installs from and checks against. Loading checks
// every field and names the entry and key at fault.
//
// Thread-safety: plain values, immutable after loading.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "status.h"

namespace ds4setup {

// One downloadable file, pinned by byte size and SHA-256 (the SHA-256 is the truth:
// the revision only says where to look and may be overridden with --revision).
struct ModelArtifact {
  std::string name;          // manifest key, e.g. "q2-imatrix"
  std::string description;
  std::string kind = "base";  // "base" (a main model) or "draft" (the MTP model)
  std::string repo;          // Hugging Face repo, e.g. "antirez/deepseek-v4-gguf"
  std::string revision;      // pinned commit
  std::string file;          // file name in the repo and on disk
  std::string url;           // optional fixed URL; "{source_dir}" expands (demo: file://)
  uint64_t bytes = 0;
  std::string sha256;        // 64 lower-case hex digits
  bool supports_mtp = false;  // base models: whether the MTP draft fits this checkpoint
  bool is_default = false;
};

struct ModelManifest {
  std::vector<ModelArtifact> models;
  std::string draft_name;  // the artifact --with-mtp adds ("mtp")

  const ModelArtifact* Find(const std::string& name) const;
  const ModelArtifact* Default() const;
  std::string BaseNames() const;  // "q2-imatrix, q2, q2-0731, demo"
};

Result<ModelManifest> LoadModelManifest(const std::string& path);
Result<ModelManifest> ParseModelManifest(const std::string& yaml_text,
                                         const std::string& origin);

// The files one run needs: the base model, then the draft when with_mtp. Refuses an
// unknown name, a draft given as base, and --with-mtp with a base that has no MTP head.
Result<std::vector<ModelArtifact>> SelectArtifacts(const ModelManifest& manifest,
                                                   const std::string& model,
                                                   bool with_mtp);

// <endpoint>/<repo>/resolve/<revision>/<file>, or the artifact's fixed url with
// {source_dir} expanded. `revision_override` replaces the pinned revision when set.
std::string ArtifactUrl(const ModelArtifact& artifact, const std::string& endpoint,
                        const std::string& revision_override,
                        const std::string& source_dir);

// A machine class ds4-setup knows how to serve.
struct HostProfile {
  std::string name;                       // "gb10", "sm90", "sm120", "demo"
  std::string description;
  std::vector<std::string> arch;          // accepted `uname -m` values; empty = any
  bool needs_gpu = true;
  std::vector<std::string> gpu_names;     // a GPU name must contain one of these
  std::string compute_capability;         // e.g. "12.1"
  std::string min_cuda;                   // e.g. "13.0"
  double min_ram_gib = 0;
  double min_gpu_memory_gib = 0;          // 0 = not checked (GB10: unified memory)
  double disk_margin_gib = 0;             // free space beyond the files still needed
  std::string cuda_architectures;         // for the engine build, e.g. "121"
  std::string default_model;              // "q2-imatrix"; "demo" for the demo profile
};

struct HostProfiles {
  std::vector<HostProfile> profiles;
  const HostProfile* Find(const std::string& name) const;
  std::string Names() const;  // "gb10, sm90, sm120, demo"
};

Result<HostProfiles> LoadHostProfiles(const std::string& path);
Result<HostProfiles> ParseHostProfiles(const std::string& yaml_text, const std::string& origin);

// Compares dotted versions numerically: "13.0" >= "12.8", "12.10" > "12.9".
int CompareVersions(const std::string& a, const std::string& b);

}  // namespace ds4setup
