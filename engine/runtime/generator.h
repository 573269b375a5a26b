// Generation building blocks used by the Engine (and by ds4-bench, which drives a
// bare Backend): chunked prompt prefill, one-token decode steps, and OutputStream,
// which turns sampled token ids into streamable text deltas.
//
// Thread-safety: free functions use the Backend they are given (one thread at a
// time, like the Backend itself); an OutputStream belongs to one generation.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/backend.h"
#include "text/stop_matcher.h"
#include "text/utf8.h"

namespace ds4 {

class Tokenizer;

// Feeds `tokens` to sequence `seq` at positions start_pos, start_pos + 1, ... in
// forward() calls of at most `chunk` tokens. When `last_logits` is not null it
// receives the logits of the last token (only that token asks for logits). Stops
// before the next chunk when `*cancel` becomes true (then *done < tokens.size()).
// `done` (may be null) receives how many tokens were fed. `last_hidden` (may be
// null) receives the HC state leaving the last block for the last token (MTP input).
Status prefill_tokens(Backend& backend, SeqId seq, std::span<const int32_t> tokens,
                      int32_t start_pos, int32_t chunk, std::vector<float>* last_logits,
                      const std::atomic<bool>* cancel = nullptr, size_t* done = nullptr,
                      std::vector<float>* last_hidden = nullptr);

// Feeds one token at `pos` and returns its logits (the prediction of pos + 1).
Status decode_token(Backend& backend, SeqId seq, int32_t token, int32_t pos,
                    std::vector<float>* logits);

// Assembles sampled tokens into text that may be streamed: never ending inside a
// UTF-8 character (bytes that can never be valid become U+FFFD), never containing
// text that might still be the start of a stop string, cut before the earliest
// stop-string match. Token ids whose text is held back are released with the next
// piece of text.
class OutputStream {
 public:
  struct Piece {
    std::vector<int32_t> token_ids;
    std::string text;
    bool empty() const { return token_ids.empty() && text.empty(); }
  };

  OutputStream(const Tokenizer& tokenizer, std::vector<std::string> stops);

  // Adds one sampled (non-EOS) token. Returns what can be released now; an empty
  // Piece when everything is held back.
  Piece push(int32_t token);
  // End of generation: releases everything still held (ids included).
  Piece finish();
  // True once a stop string matched; later pushes release nothing.
  bool stopped() const { return stops_.stopped(); }

 private:
  Piece release(std::string text);

  const Tokenizer& tokenizer_;
  Utf8StreamDecoder utf8_;
  StopMatcher stops_;
  std::vector<int32_t> pending_ids_;
};

}  // namespace ds4
