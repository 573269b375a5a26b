// Greedy speculative decoding with the MTP draft block (spec/MODEL.md §2.11).
//
// Drafting follows the DeepSeek-V3 pairing (MODEL.md open question Q3): the HC state
// h_p leaving the main model's last block at position p, read together with the
// token x_{p+1} at position p, predicts x_{p+2}; each further draft reads the MTP
// block's own output state and the previous draft. The main model then checks the
// drafts in ONE forward batch: a draft is accepted while it equals the main model's
// greedy choice at that position, and the main model's own next token follows the
// accepted prefix, so every round yields at least one token and the output is
// exactly that of plain greedy decoding. Rejected drafts are rolled back with
// Backend::truncate (which also forgets their MTP rows). The Engine's decode loop
// chooses how many drafts to make per round (adaptive, see engine.cpp).
//
// Thread-safety: the functions drive the Backend they are given, one thread at a time.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"
#include "runtime/backend.h"

namespace ds4 {

// Runs the MTP block `n` times from the HC state `hidden` of the main model's token
// at `pos` and the token `next_token` that follows it; returns the draft guesses for
// positions pos + 2, pos + 3, ... (greedy).
Status draft_with_mtp(Backend& backend, SeqId seq, std::span<const float> hidden, int32_t pos,
                      int32_t next_token, int32_t n, std::vector<int32_t>* drafts);

struct Verification {
  int32_t accepted = 0;          // drafts equal to the main model's greedy choices
  std::vector<int32_t> tokens;   // the accepted drafts, then the main model's next token
  std::vector<float> hidden;     // HC state of the last token kept in the sequence
};

// Feeds `token` at `pos` (= the sequence length) followed by `drafts`, asking logits
// and HC states for all of them, and verifies the drafts. Afterwards the sequence
// holds `token` and the accepted drafts (the rest is rolled back). `drafts` may be
// empty (then this is one plain greedy decode step that also returns the HC state).
// At most Backend::kMaxRollback drafts.
Status verify_drafts(Backend& backend, SeqId seq, int32_t token, int32_t pos,
                     std::span<const int32_t> drafts, Verification* out);

}  // namespace ds4
