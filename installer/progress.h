// Progress: shows how a download is going (bytes, rate, ETA). On a terminal it redraws
// one bar line at most ten times a second; otherwise (logs, pipes, CI) it prints a plain
// line every `interval_seconds` (DS4_PROGRESS_INTERVAL, default 10 s) and at the end.
//
// Thread-safety: one Progress per download, updated from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "ui.h"

namespace ds4setup {

class Progress {
 public:
  // `total`: the file size; `start`: bytes already present when this run began.
  Progress(Ui* ui, std::string label, uint64_t total, uint64_t start);

  void Update(uint64_t done);  // bytes of the file now on disk
  void Finish();               // final line (ends the bar on a terminal)

  // "[=====>    ] 45%  3.2 GiB / 7.0 GiB  112.4 MiB/s  ETA 0:35" (no bar when width 0).
  static std::string Format(uint64_t done, uint64_t total, double bytes_per_second,
                            int bar_width);

 private:
  using Clock = std::chrono::steady_clock;
  double Rate(Clock::time_point now) const;
  void Draw(Clock::time_point now);

  Ui* ui_;
  std::string label_;
  uint64_t total_;
  uint64_t start_;
  uint64_t done_;
  bool tty_;
  double interval_seconds_;
  Clock::time_point began_;
  Clock::time_point last_draw_;
  bool finished_ = false;
  bool moving_ = false;  // Update() has been called once
};

}  // namespace ds4setup
