// StopMatcher: client stop strings applied while streaming (spec/TOKENIZER_AND_CHAT.md
// §4.2 rule 1, §8 rule 4). Generated text is pushed as it arrives; what is returned
// is safe to send: text that might be the beginning of a stop string is held back,
// and the held part never splits a UTF-8 character. At the earliest match the text is
// cut just before the stop string and the matcher reports that it stopped.
//
// Thread-safety: one instance per generation, used by one thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ds4 {

class StopMatcher {
 public:
  // Empty strings in `stops` are ignored.
  explicit StopMatcher(std::vector<std::string> stops = {});

  // Appends `text`; returns what may be sent now. After a match, returns the text up
  // to the stop string and every later push() returns "".
  std::string push(std::string_view text);
  // End of generation: returns everything still held (nothing after a match).
  std::string finish();

  bool stopped() const { return stopped_; }
  // The stop string that matched ("" when none).
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  size_t max_len_ = 0;
  std::string held_;
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace ds4
