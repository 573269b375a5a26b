// ScriptedBackend: a Backend for engine and scheduler tests. It keeps each sequence's
// token history and answers every logits request with a single clear maximum at
// script(history), so a token fed to the wrong sequence or position, or any mistake in
// KV reuse and truncation, changes the output. It records what it was fed and can
// inject failures. Its MTP block sees the same script (`mtp_wrong` makes chosen
// predictions wrong). Also: the tiny chat model's tokenizer, which the scripted
// engines use for text.
//
// Thread-safety: one thread, like every Backend.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "runtime/backend.h"
#include "text/tokenizer.h"

namespace ds4::test {

inline std::string data_path(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

inline std::unique_ptr<Tokenizer> load_tokenizer() {
  auto gguf = GgufFile::Open(data_path("tiny-chat/model.gguf"));
  REQUIRE_MESSAGE(gguf.ok(), gguf.status().message());
  auto tok = Tokenizer::FromGguf(**gguf);
  REQUIRE_MESSAGE(tok.ok(), tok.status().message());
  return std::make_unique<Tokenizer>(std::move(*tok));
}

// The next token after `history`.
using Script = std::function<int32_t(const std::vector<int32_t>& history)>;

// A history-dependent token in [100, 1100): ordinary text tokens of tiny-chat.
inline int32_t hash_script(const std::vector<int32_t>& h) {
  uint64_t x = 1469598103934665603ull;
  for (int32_t t : h) x = (x ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  return 100 + static_cast<int32_t>(x % 1000);
}

class ScriptedBackend : public Backend {
 public:
  explicit ScriptedBackend(int32_t vocab, Script script = hash_script) : vocab_(vocab), script_(std::move(script)) {}

  std::string_view name() const override { return "scripted"; }
  Result<SeqId> new_sequence(int32_t max_ctx) override {
    const SeqId id = next_id_++;
    seqs_[id] = {};
    max_ctx_[id] = max_ctx;
    return id;
  }
  void free_sequence(SeqId seq) override { seqs_.erase(seq); }
  int32_t sequence_length(SeqId seq) const override { return static_cast<int32_t>(seqs_.at(seq).size()); }
  Status truncate(SeqId seq, int32_t n) override {
    auto& h = seqs_.at(seq);
    const int32_t len = static_cast<int32_t>(h.size());
    if (n > len || (n != 0 && n < len - kMaxRollback)) {
      return Status::Error("scripted: cannot truncate " + std::to_string(len) + " to " + std::to_string(n));
    }
    h.resize(n);
    ++truncations;
    return Status::Ok();
  }
  Status forward(std::span<const BatchToken> batch, ForwardOutput* out) override {
    ++forward_calls;
    calls.emplace_back(batch.begin(), batch.end());
    if (fail_next_forward) {
      fail_next_forward = false;
      return Status::Error("scripted: injected failure");
    }
    out->logits.clear();
    out->hidden.clear();
    // Check the whole batch first: on error no sequence advances (Backend contract).
    std::map<SeqId, int32_t> next_pos;
    for (const BatchToken& t : batch) {
      if (fail_seq && *fail_seq == t.seq && t.pos >= fail_from_pos) {
        return Status::Error("scripted: injected failure of sequence " + std::to_string(t.seq));
      }
      auto it = next_pos.find(t.seq);
      const int32_t expected = it == next_pos.end() ? sequence_length(t.seq) : it->second;
      if (t.pos != expected) {
        return Status::Error("scripted: sequence " + std::to_string(t.seq) + " token at position " +
                             std::to_string(t.pos) + ", expected " + std::to_string(expected));
      }
      if (t.pos >= max_ctx_.at(t.seq)) return Status::Error("scripted: beyond max_ctx");
      next_pos[t.seq] = t.pos + 1;
    }
    max_batch_seen = std::max<int32_t>(max_batch_seen, static_cast<int32_t>(batch.size()));
    for (const BatchToken& t : batch) {
      auto& h = seqs_.at(t.seq);
      h.push_back(t.token);
      ++tokens_fed;
      if (t.want_logits) {
        ++logits_requested;
        push_row(script_(h), out);
      }
      if (t.want_hidden) out->hidden.insert(out->hidden.end(), kHidden, static_cast<float>(t.pos));
    }
    if (after_forward) after_forward();
    return Status::Ok();
  }

  // The MTP block: a call with token t at position q states that t sits at q + 1 and
  // predicts q + 2 from the main history plus the earlier draft inputs.
  bool has_mtp() const override { return mtp_enabled; }
  Status forward_mtp(std::span<const MtpToken> batch, ForwardOutput* out) override {
    out->logits.clear();
    out->hidden.clear();
    for (const MtpToken& t : batch) {
      ++mtp_calls;
      if (t.hidden == nullptr) return Status::Error("scripted: MTP token without HC state");
      auto& h = seqs_.at(t.seq);
      auto& next = mtp_next_[t.seq];
      next[t.pos + 1] = t.token;
      std::vector<int32_t> known;
      for (int32_t j = 0; j <= t.pos + 1; ++j) {
        if (j < static_cast<int32_t>(h.size())) {
          known.push_back(h[j]);
        } else if (next.count(j)) {
          known.push_back(next[j]);
        } else {
          return Status::Error("scripted: MTP at position " + std::to_string(t.pos) + " has no token for position " +
                               std::to_string(j));
        }
      }
      int32_t guess = script_(known);
      if (mtp_wrong && mtp_wrong(t.pos)) guess = guess == 100 ? 101 : 100;
      if (t.want_logits) push_row(guess, out);
      if (t.want_hidden) out->hidden.insert(out->hidden.end(), kHidden, -1.0f);
    }
    return Status::Ok();
  }

  size_t live_sequences() const { return seqs_.size(); }

  static constexpr size_t kHidden = 4;
  // Knobs.
  bool mtp_enabled = false;
  std::function<bool(int32_t pos)> mtp_wrong;  // these MTP predictions are made wrong
  bool fail_next_forward = false;              // the next forward() fails (nothing advances)
  std::optional<SeqId> fail_seq;               // forward() fails for this sequence's tokens
  int32_t fail_from_pos = 0;                   //   at positions from here on
  std::function<void()> after_forward;         // called after each successful forward()
  // Records.
  std::vector<std::vector<BatchToken>> calls;  // every forward() batch, in order
  int64_t forward_calls = 0, tokens_fed = 0, logits_requested = 0, truncations = 0, mtp_calls = 0;
  int32_t max_batch_seen = 0;

 private:
  void push_row(int32_t argmax, ForwardOutput* out) const {
    std::vector<float> row(vocab_, 0.0f);
    row[argmax] = 10.0f;
    out->logits.insert(out->logits.end(), row.begin(), row.end());
  }

  int32_t vocab_;
  Script script_;
  SeqId next_id_ = 0;
  std::map<SeqId, std::vector<int32_t>> seqs_;
  std::map<SeqId, int32_t> max_ctx_;
  std::map<SeqId, std::map<int32_t, int32_t>> mtp_next_;
};

}  // namespace ds4::test
