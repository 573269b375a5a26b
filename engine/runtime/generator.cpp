#include "runtime/generator.h"

#include <algorithm>
#include <string>
#include <utility>

#include "text/tokenizer.h"

namespace ds4 {

Status prefill_tokens(Backend& backend, SeqId seq, std::span<const int32_t> tokens,
                      int32_t start_pos, int32_t chunk, std::vector<float>* last_logits,
                      const std::atomic<bool>* cancel, size_t* done,
                      std::vector<float>* last_hidden) {
  if (done != nullptr) *done = 0;
  if (chunk <= 0) return Status::Error("prefill: chunk size must be positive, got " + std::to_string(chunk));
  std::vector<BatchToken> batch;
  ForwardOutput out;
  size_t fed = 0;
  while (fed < tokens.size()) {
    if (cancel != nullptr && cancel->load(std::memory_order_relaxed)) break;
    const size_t n = std::min<size_t>(static_cast<size_t>(chunk), tokens.size() - fed);
    batch.clear();
    for (size_t i = 0; i < n; ++i) {
      BatchToken t;
      t.token = tokens[fed + i];
      t.seq = seq;
      t.pos = start_pos + static_cast<int32_t>(fed + i);
      const bool last = fed + i + 1 == tokens.size();
      t.want_logits = last_logits != nullptr && last;
      t.want_hidden = last_hidden != nullptr && last;
      batch.push_back(t);
    }
    DS4_RETURN_IF_ERROR(backend.forward(batch, &out).wrap(
        "prefill at position " + std::to_string(start_pos + static_cast<int32_t>(fed))));
    fed += n;
    if (done != nullptr) *done = fed;
  }
  if (fed == tokens.size() && !tokens.empty()) {
    if (last_logits != nullptr) *last_logits = std::move(out.logits);
    if (last_hidden != nullptr) *last_hidden = std::move(out.hidden);
  }
  return Status::Ok();
}

Status decode_token(Backend& backend, SeqId seq, int32_t token, int32_t pos,
                    std::vector<float>* logits) {
  BatchToken t;
  t.token = token;
  t.seq = seq;
  t.pos = pos;
  t.want_logits = true;
  ForwardOutput out;
  DS4_RETURN_IF_ERROR(backend.forward(std::span<const BatchToken>(&t, 1), &out)
                          .wrap("decode at position " + std::to_string(pos)));
  *logits = std::move(out.logits);
  return Status::Ok();
}

OutputStream::OutputStream(const Tokenizer& tokenizer, std::vector<std::string> stops)
    : tokenizer_(tokenizer), stops_(std::move(stops)) {}

OutputStream::Piece OutputStream::push(int32_t token) {
  if (stops_.stopped()) return {};
  pending_ids_.push_back(token);
  const std::string complete = utf8_.push(tokenizer_.token_bytes(token));
  return release(stops_.push(complete));
}

OutputStream::Piece OutputStream::finish() {
  std::string text;
  if (!stops_.stopped()) {
    text = stops_.push(utf8_.finish());
    if (!stops_.stopped()) text += stops_.finish();
  }
  Piece piece;
  piece.text = std::move(text);
  piece.token_ids = std::move(pending_ids_);
  pending_ids_.clear();
  return piece;
}

OutputStream::Piece OutputStream::release(std::string text) {
  Piece piece;
  // Ids travel with text; after a stop match, the ids that completed it are
  // released with the last piece of text before the cut.
  if (text.empty() && !stops_.stopped()) return piece;
  piece.text = std::move(text);
  piece.token_ids = std::move(pending_ids_);
  pending_ids_.clear();
  return piece;
}

}  // namespace ds4
