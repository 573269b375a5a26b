// Tests for installer/manifest: the shipped manifests hold exactly the pinned artifacts
// and profiles; parsing names the entry and key at fault; artifact selection rules.
#include "manifest.h"

#include <doctest/doctest.h>

#include <string>

using namespace ds4setup;

namespace {

const std::string kManifests = std::string(DS4_SOURCE_DIR) + "/manifests";

ModelManifest Shipped() {
  Result<ModelManifest> m = LoadModelManifest(kManifests + "/models.yaml");
  REQUIRE_MESSAGE(m.ok(), m.status().message());
  return *m;
}

void CheckArtifact(const ModelManifest& m, const std::string& name, const std::string& file,
                   uint64_t bytes, const std::string& sha256) {
  const ModelArtifact* a = m.Find(name);
  REQUIRE_MESSAGE(a != nullptr, name);
  CHECK(a->file == file);
  CHECK(a->bytes == bytes);
  CHECK(a->sha256 == sha256);
}

const char* kMinimal = R"(
models:
  base1:
    kind: base
    default: true
    supports_mtp: true
    repo: org/repo
    revision: abc
    file: base1.gguf
    bytes: 10
    sha256: 0000000000000000000000000000000000000000000000000000000000000001
)";

}  // namespace

TEST_CASE("shipped models.yaml pins the five artifacts exactly") {
  ModelManifest m = Shipped();
  CHECK(m.models.size() == 5);
  CheckArtifact(m, "q2-imatrix", "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf",
                86720111488ull, "efc7ed607ff27076e3e501fc3fefefa33c0ed8cf1eff483a2b7fdc0c2e616668");
  CheckArtifact(m, "q2", "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf", 86720111200ull,
                "31598c67c8b8744d3bcebcd19aa62253c6dc43cef3b8adf9f593656c9e86fd8c");
  CheckArtifact(m, "q2-0731", "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix-0731.gguf",
                86720111488ull, "ca22ae2f838e14077c22bc1c1417b71b45b5e5a3687bd96c2ac6e17fdb6261c0");
  CheckArtifact(m, "mtp", "DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf", 3807602400ull,
                "afd481ee689dce9037f70f39085fcdae5a5b096d521cdad43b19fa52bf8f4083");
  CheckArtifact(m, "demo", "ds4-tiny-chat.gguf", 16117856ull,
                "845508dc773d398da30855f7d0296410b8faab2c6520a8fdbef4431c04c10b5c");
  const ModelArtifact* q2 = m.Find("q2-imatrix");
  CHECK(q2->repo == "antirez/deepseek-v4-gguf");
  CHECK(q2->revision == "b0c3326275d2207e25e42bc8ac0704952466b5bb");
  REQUIRE(m.Default() != nullptr);
  CHECK(m.Default()->name == "q2-imatrix");
  CHECK(m.draft_name == "mtp");
  CHECK(m.Find("mtp")->kind == "draft");
  CHECK_FALSE(m.Find("q2-0731")->supports_mtp);
}

TEST_CASE("shipped hosts.yaml has gb10, sm90, sm120 and demo") {
  Result<HostProfiles> hosts = LoadHostProfiles(kManifests + "/hosts.yaml");
  REQUIRE_MESSAGE(hosts.ok(), hosts.status().message());
  CHECK(hosts->Names() == "gb10, sm90, sm120, demo");
  const HostProfile* gb10 = hosts->Find("gb10");
  REQUIRE(gb10 != nullptr);
  CHECK(gb10->arch == std::vector<std::string>{"aarch64"});
  CHECK(gb10->compute_capability == "12.1");
  CHECK(gb10->min_cuda == "13.0");
  CHECK(gb10->min_ram_gib == doctest::Approx(110));
  CHECK(gb10->min_gpu_memory_gib == 0);  // GB10 reports GPU memory as N/A
  CHECK_FALSE(hosts->Find("demo")->needs_gpu);
  CHECK(hosts->Find("demo")->default_model == "demo");
}

TEST_CASE("--with-mtp adds the draft, and is refused for q2-0731") {
  ModelManifest m = Shipped();
  Result<std::vector<ModelArtifact>> files = SelectArtifacts(m, "q2-imatrix", true);
  REQUIRE(files.ok());
  REQUIRE(files->size() == 2);
  CHECK((*files)[0].name == "q2-imatrix");
  CHECK((*files)[1].name == "mtp");

  Result<std::vector<ModelArtifact>> refused = SelectArtifacts(m, "q2-0731", true);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("--with-mtp cannot be used with model 'q2-0731'") != std::string::npos);

  Result<std::vector<ModelArtifact>> alone = SelectArtifacts(m, "q2-0731", false);
  REQUIRE(alone.ok());
  CHECK(alone->size() == 1);
}

TEST_CASE("unknown model and a draft used as base are refused with the known names") {
  ModelManifest m = Shipped();
  Result<std::vector<ModelArtifact>> unknown = SelectArtifacts(m, "q4", false);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().message() == "unknown model 'q4'; known models: q2-imatrix, q2, q2-0731, demo");
  Result<std::vector<ModelArtifact>> draft = SelectArtifacts(m, "mtp", false);
  REQUIRE_FALSE(draft.ok());
  CHECK(draft.status().message().find("is a draft model") != std::string::npos);
}

TEST_CASE("URLs follow <endpoint>/<repo>/resolve/<revision>/<file>, revision overridable") {
  ModelManifest m = Shipped();
  const ModelArtifact& q2 = *m.Find("q2");
  CHECK(ArtifactUrl(q2, "https://huggingface.co", "", "/src") ==
        "https://huggingface.co/antirez/deepseek-v4-gguf/resolve/b0c3326275d2207e25e42bc8ac0704952466b5bb/"
        "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf");
  CHECK(ArtifactUrl(q2, "http://127.0.0.1:9", "main", "/src") ==
        "http://127.0.0.1:9/antirez/deepseek-v4-gguf/resolve/main/"
        "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf");
  CHECK(ArtifactUrl(*m.Find("demo"), "https://huggingface.co", "", "/src/ds4") ==
        "file:///src/ds4/tests/data/tiny-chat/model.gguf");
}

TEST_CASE("a minimal manifest parses") {
  Result<ModelManifest> m = ParseModelManifest(kMinimal, "test.yaml");
  REQUIRE_MESSAGE(m.ok(), m.status().message());
  CHECK(m->Default()->name == "base1");
  CHECK(m->Find("base1")->bytes == 10);
}

TEST_CASE("parse errors name the file, the entry and the key") {
  std::string text = kMinimal;
  SUBCASE("missing key") {
    text.replace(text.find("    bytes: 10\n"), 14, "");
    Result<ModelManifest> m = ParseModelManifest(text, "m.yaml");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().message() == "m.yaml: models.base1: missing key 'bytes'");
  }
  SUBCASE("bad sha256") {
    text.replace(text.find("0000000000"), 10, "XYZ");
    Result<ModelManifest> m = ParseModelManifest(text, "m.yaml");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().message().find("m.yaml: models.base1: sha256 must be 64 lower-case hex digits") == 0);
  }
  SUBCASE("wrong type") {
    text.replace(text.find("bytes: 10"), 9, "bytes: many");
    Result<ModelManifest> m = ParseModelManifest(text, "m.yaml");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().message().find("m.yaml: models.base1: key 'bytes' has the wrong type") == 0);
  }
  SUBCASE("path in file name") {
    text.replace(text.find("file: base1.gguf"), 16, "file: ../x.gguf");
    Result<ModelManifest> m = ParseModelManifest(text, "m.yaml");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().message().find("file must be a plain file name") != std::string::npos);
  }
  SUBCASE("not yaml") {
    Result<ModelManifest> m = ParseModelManifest("models: [unclosed", "m.yaml");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().message().find("m.yaml: not valid YAML") == 0);
  }
  SUBCASE("missing file") {
    Result<ModelManifest> m = LoadModelManifest("/nonexistent/models.yaml");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().message() == "cannot open /nonexistent/models.yaml");
  }
}

TEST_CASE("a GPU profile without its GPU keys is refused") {
  const char* text = R"(
profiles:
  broken:
    needs_gpu: true
    default_model: x
)";
  Result<HostProfiles> hosts = ParseHostProfiles(text, "h.yaml");
  REQUIRE_FALSE(hosts.ok());
  CHECK(hosts.status().message() ==
        "h.yaml: profiles.broken: a GPU profile needs gpu_names, compute_capability and min_cuda");
}

TEST_CASE("versions compare numerically") {
  CHECK(CompareVersions("13.0", "13.0") == 0);
  CHECK(CompareVersions("13", "13.0") == 0);
  CHECK(CompareVersions("12.8", "13.0") < 0);
  CHECK(CompareVersions("13.1", "13.0") > 0);
  CHECK(CompareVersions("12.10", "12.9") > 0);
}
