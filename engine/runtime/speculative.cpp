#include "runtime/speculative.h"

#include <string>

#include "runtime/sampler.h"

namespace ds4 {

Status draft_with_mtp(Backend& backend, SeqId seq, std::span<const float> hidden, int32_t pos,
                      int32_t next_token, int32_t n, std::vector<int32_t>* drafts) {
  drafts->clear();
  if (hidden.empty()) return Status::Error("MTP draft: no HC state to start from");
  std::vector<float> state(hidden.begin(), hidden.end());
  ForwardOutput out;
  int32_t token = next_token;
  for (int32_t i = 0; i < n; ++i) {
    MtpToken t;
    t.token = token;
    t.seq = seq;
    t.pos = pos + i;
    t.hidden = state.data();
    t.want_logits = true;
    t.want_hidden = i + 1 < n;
    DS4_RETURN_IF_ERROR(backend.forward_mtp(std::span<const MtpToken>(&t, 1), &out)
                            .wrap("MTP draft " + std::to_string(i) + " at position " +
                                  std::to_string(pos + i)));
    token = Sampler::greedy(out.logits);
    drafts->push_back(token);
    if (t.want_hidden) {
      if (out.hidden.size() != state.size()) {
        return Status::Error("MTP draft: the block returned an HC state of " +
                             std::to_string(out.hidden.size()) + " floats, expected " +
                             std::to_string(state.size()));
      }
      state.swap(out.hidden);
    }
  }
  return Status::Ok();
}

Status verify_drafts(Backend& backend, SeqId seq, int32_t token, int32_t pos,
                     std::span<const int32_t> drafts, Verification* out) {
  const int32_t k = static_cast<int32_t>(drafts.size());
  if (k > Backend::kMaxRollback) {
    return Status::Error("speculative verify: " + std::to_string(k) + " drafts exceed the rollback limit of " +
                         std::to_string(Backend::kMaxRollback));
  }
  std::vector<BatchToken> batch(static_cast<size_t>(k) + 1);
  for (int32_t i = 0; i <= k; ++i) {
    batch[i].token = i == 0 ? token : drafts[i - 1];
    batch[i].seq = seq;
    batch[i].pos = pos + i;
    batch[i].want_logits = true;
    batch[i].want_hidden = true;
  }
  ForwardOutput fwd;
  DS4_RETURN_IF_ERROR(backend.forward(batch, &fwd).wrap("speculative verify at position " + std::to_string(pos)));
  const size_t rows = batch.size();
  if (fwd.logits.empty() || fwd.logits.size() % rows != 0 || fwd.hidden.size() % rows != 0) {
    return Status::Error("speculative verify: the backend returned " + std::to_string(fwd.logits.size()) +
                         " logits and " + std::to_string(fwd.hidden.size()) + " HC values for " +
                         std::to_string(rows) + " tokens");
  }
  const size_t vocab = fwd.logits.size() / rows;
  const size_t hc = fwd.hidden.size() / rows;
  auto logits_row = [&](int32_t i) {
    return std::span<const float>(fwd.logits.data() + static_cast<size_t>(i) * vocab, vocab);
  };

  out->tokens.clear();
  int32_t m = 0;
  while (m < k) {
    const int32_t choice = Sampler::greedy(logits_row(m));
    if (choice != drafts[m]) break;
    out->tokens.push_back(choice);
    ++m;
  }
  out->tokens.push_back(Sampler::greedy(logits_row(m)));
  out->accepted = m;
  out->hidden.assign(fwd.hidden.begin() + static_cast<std::ptrdiff_t>(m * hc),
                     fwd.hidden.begin() + static_cast<std::ptrdiff_t>((m + 1) * hc));
  if (m < k) {
    DS4_RETURN_IF_ERROR(backend.truncate(seq, pos + m + 1).wrap("speculative rollback"));
  }
  return Status::Ok();
}

}  // namespace ds4
