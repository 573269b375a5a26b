// Model: configuration read from GGUF metadata (fixture dims, not the real model's),
// clear errors for a missing/invalid key, a wrong tensor type and a missing tensor,
// optional selection biases, and loading the MTP file.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "model/config.h"
#include "model/model.h"

namespace {

std::string data_path(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Byte offset of the first occurrence of `s` in `bytes`.
size_t find_bytes(const std::vector<uint8_t>& bytes, const std::string& s) {
  auto it = std::search(bytes.begin(), bytes.end(), s.begin(), s.end());
  REQUIRE_MESSAGE(it != bytes.end(), "not found in file: " << s);
  return static_cast<size_t>(it - bytes.begin());
}

// Overwrites the string `from` with `to` (same length) in the file bytes.
void rename_in_place(std::vector<uint8_t>& bytes, const std::string& from, const std::string& to) {
  REQUIRE(from.size() == to.size());
  std::copy(to.begin(), to.end(), bytes.begin() + find_bytes(bytes, from));
}

ds4::Result<std::unique_ptr<ds4::Model>> load_from(std::vector<uint8_t>& bytes) {
  auto gguf = ds4::GgufFile::FromMemory(bytes, "mutated.gguf");
  REQUIRE_MESSAGE(gguf.ok(), gguf.status().message());
  return ds4::Model::FromGguf(std::move(gguf.value()));
}

}  // namespace

TEST_CASE("tiny-fast config comes from the metadata") {
  auto model = ds4::Model::Load(data_path("tiny-fast/model.gguf"));
  REQUIRE_MESSAGE(model.ok(), model.status().message());
  const ds4::ModelConfig& c = (*model)->config();
  CHECK(c.n_layers == 6);
  CHECK(c.dim == 256);
  CHECK(c.vocab == 1000);
  CHECK(c.n_heads == 4);
  CHECK(c.head_dim == 128);
  CHECK(c.rope_dim == 64);
  CHECK(c.nope_dim() == 64);
  CHECK(c.q_lora == 64);
  CHECK(c.out_groups == 2);
  CHECK(c.out_lora == 32);
  CHECK(c.window == 16);
  CHECK(c.compress_ratios == std::vector<int32_t>{0, 0, 4, 16, 4, 16});
  CHECK(c.mtp_compress_ratio == 0);
  CHECK(c.index_heads == 16);
  CHECK(c.index_head_dim == 128);
  CHECK(c.index_topk == 8);
  CHECK(c.n_experts == 8);
  CHECK(c.n_experts_used == 6);
  CHECK(c.n_shared_experts == 1);
  CHECK(c.expert_ffn == 256);
  CHECK(c.n_hash_layers == 3);
  CHECK(c.route_scale == doctest::Approx(1.5));
  CHECK(c.route_norm);
  CHECK(c.swiglu_limit == std::vector<float>(6, 10.0f));
  CHECK(c.rope_theta == doctest::Approx(10000.0));
  CHECK(c.compress_rope_theta == doctest::Approx(160000.0));
  CHECK(c.rope_factor == doctest::Approx(16.0));
  CHECK(c.beta_fast == doctest::Approx(32.0));
  CHECK(c.beta_slow == doctest::Approx(1.0));
  CHECK(c.original_ctx == 65536);
  CHECK(c.norm_eps == doctest::Approx(1e-6));
  CHECK(c.hc_mult == 4);
  CHECK(c.hc_sinkhorn_iters == 20);
  CHECK(c.hc_eps == doctest::Approx(1e-6));
  CHECK(c.hc_dim() == 1024);
  CHECK(c.hc_mix() == 24);

  const ds4::Model& m = **model;
  CHECK(m.layer(0).hash);
  CHECK(m.layer(2).hash);
  CHECK_FALSE(m.layer(3).hash);
  CHECK(m.layer(2).ratio == 4);
  CHECK(m.layer(2).indexer.q_b.present());
  CHECK(m.layer(3).compressor.ape.rows() == 16);
  CHECK_FALSE(m.layer(3).indexer.q_b.present());
  CHECK_FALSE(m.layer(1).compressor.kv.present());
  // Hash layers have no selection bias (H33); the others do in this file.
  CHECK_FALSE(m.layer(0).exp_probs_b.present());
  CHECK(m.layer(3).exp_probs_b.present());
  CHECK(m.layer(5).ffn_gate_exps.mats() == 8);
  CHECK(m.output().rows() == 1000);
}

TEST_CASE("tiny-real config: real window, ratios and top-k") {
  auto model = ds4::Model::Load(data_path("tiny-real/model.gguf"));
  REQUIRE_MESSAGE(model.ok(), model.status().message());
  const ds4::ModelConfig& c = (*model)->config();
  CHECK(c.window == 128);
  CHECK(c.compress_ratios == std::vector<int32_t>{0, 0, 4, 128, 4, 128});
  CHECK(c.index_topk == 512);
  CHECK((*model)->layer(3).compressor.ape.rows() == 128);
  CHECK((*model)->layer(3).compressor.kv.rows() == 128);  // no overlap: width = head dim
  CHECK((*model)->layer(4).compressor.kv.rows() == 256);  // ratio 4 overlap: 2 x head dim
}

TEST_CASE("tiny-chat config: other sizes again") {
  auto model = ds4::Model::Load(data_path("tiny-chat/model.gguf"));
  REQUIRE_MESSAGE(model.ok(), model.status().message());
  const ds4::ModelConfig& c = (*model)->config();
  CHECK(c.vocab == 2048);
  CHECK(c.head_dim == 512);
  CHECK(c.nope_dim() == 448);
  CHECK(c.n_experts == 16);
  CHECK(c.index_heads == 8);
  CHECK(c.out_lora == 64);
}

TEST_CASE("the MTP file loads and binds its block") {
  auto model = ds4::Model::Load(data_path("tiny-fast/model.gguf"));
  REQUIRE_MESSAGE(model.ok(), model.status().message());
  CHECK_FALSE((*model)->has_mtp());
  ds4::Status s = (*model)->load_mtp(data_path("tiny-fast/mtp.gguf"));
  REQUIRE_MESSAGE(s.ok(), s.message());
  REQUIRE((*model)->has_mtp());
  const ds4::MtpWeights& mtp = (*model)->mtp();
  CHECK(mtp.block.ratio == 0);
  CHECK_FALSE(mtp.block.hash);
  CHECK(mtp.block.exp_probs_b.present());
  CHECK(mtp.block.ffn_gate_exps.type() == ds4::GgmlType::Q4_K);
  CHECK(mtp.e_proj.rows() == 256);
  CHECK(mtp.hc_head_fn.type() == ds4::GgmlType::F32);

  // A main model file is not an MTP file: the error names the missing tensor.
  ds4::Status wrong = (*model)->load_mtp(data_path("tiny-fast/model.gguf"));
  CHECK_FALSE(wrong.ok());
  CHECK(wrong.message().find("mtp.0.") != std::string::npos);
  ds4::Status missing = (*model)->load_mtp(data_path("tiny-fast/no-such-mtp.gguf"));
  CHECK_FALSE(missing.ok());
}

TEST_CASE("a missing metadata key is named") {
  auto bytes = read_file(data_path("tiny-fast/model.gguf"));
  rename_in_place(bytes, "deepseek4.attention.sliding_window", "deepseek4.attention.sliding_windoX");
  auto model = load_from(bytes);
  REQUIRE_FALSE(model.ok());
  CHECK_MESSAGE(model.status().message().find("deepseek4.attention.sliding_window") != std::string::npos,
                model.status().message());
}

TEST_CASE("a missing optional expert-group key is accepted, a missing required one is not") {
  auto bytes = read_file(data_path("tiny-fast/model.gguf"));
  rename_in_place(bytes, "deepseek4.hyper_connection.sinkhorn_iterations",
                  "deepseek4.hyper_connection.sinkhorn_iterationX");
  auto model = load_from(bytes);
  REQUIRE_FALSE(model.ok());
  CHECK_MESSAGE(model.status().message().find("hyper_connection.sinkhorn_iterations") != std::string::npos,
                model.status().message());
}

TEST_CASE("a tensor of the wrong type is named") {
  auto bytes = read_file(data_path("tiny-fast/model.gguf"));
  // Tensor table entry: name, n_dims (u32), ne (u64 each), type (u32), offset (u64).
  const std::string name = "blk.4.attn_norm.weight";
  size_t at = find_bytes(bytes, name) + name.size();
  uint32_t n_dims = 0;
  std::memcpy(&n_dims, &bytes[at], 4);
  REQUIRE(n_dims == 1);
  const size_t type_at = at + 4 + 8 * n_dims;
  uint32_t type = 0;
  std::memcpy(&type, &bytes[type_at], 4);
  REQUIRE(type == static_cast<uint32_t>(ds4::GgmlType::F32));
  const uint32_t i32 = static_cast<uint32_t>(ds4::GgmlType::I32);  // same size, wrong type
  std::memcpy(&bytes[type_at], &i32, 4);
  auto model = load_from(bytes);
  REQUIRE_FALSE(model.ok());
  const std::string& msg = model.status().message();
  CHECK_MESSAGE(msg.find(name) != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("F32") != std::string::npos, msg);
}

TEST_CASE("a missing compressor tensor is named") {
  auto bytes = read_file(data_path("tiny-fast/model.gguf"));
  rename_in_place(bytes, "blk.3.attn_compressor_gate.weight", "blk.3.attn_compressor_gate.weighX");
  auto model = load_from(bytes);
  REQUIRE_FALSE(model.ok());
  CHECK_MESSAGE(model.status().message().find("blk.3.attn_compressor_gate.weight") != std::string::npos,
                model.status().message());
}

TEST_CASE("inconsistent configurations are rejected with the field named") {
  auto model = ds4::Model::Load(data_path("tiny-fast/model.gguf"));
  REQUIRE(model.ok());
  ds4::ModelConfig c = (*model)->config();
  CHECK(c.validate().ok());
  ds4::ModelConfig bad = c;
  bad.out_groups = 3;
  CHECK(bad.validate().message().find("output_group_count") != std::string::npos);
  bad = c;
  bad.n_experts_used = 9;
  CHECK(bad.validate().message().find("expert_used_count") != std::string::npos);
  bad = c;
  bad.rope_dim = 256;
  CHECK(bad.validate().message().find("rope.dimension_count") != std::string::npos);
  bad = c;
  bad.compress_ratios.pop_back();
  CHECK_FALSE(bad.validate().ok());
}
