#include "progress.h"

#include <cstdio>
#include <cstdlib>

#include "doctor.h"

namespace ds4setup {
namespace {

std::string FormatDuration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "?";
  long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof(buf), "%ld:%02ld", s / 60, s % 60);
  return buf;
}

}  // namespace

Progress::Progress(Ui* ui, std::string label, uint64_t total, uint64_t start)
    : ui_(ui), label_(std::move(label)), total_(total), start_(start), done_(start),
      tty_(ui->stdout_is_tty()), interval_seconds_(10.0), began_(Clock::now()),
      last_draw_(began_) {
  if (const char* env = std::getenv("DS4_PROGRESS_INTERVAL")) {
    double value = std::atof(env);
    if (value > 0) interval_seconds_ = value;
  }
}

double Progress::Rate(Clock::time_point now) const {
  double elapsed = std::chrono::duration<double>(now - began_).count();
  if (elapsed <= 0) return 0;
  return static_cast<double>(done_ - start_) / elapsed;
}

std::string Progress::Format(uint64_t done, uint64_t total, double rate, int bar_width) {
  double fraction = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  if (fraction > 1) fraction = 1;
  std::string line;
  if (bar_width > 0) {
    int filled = static_cast<int>(fraction * bar_width);
    line += "[";
    for (int i = 0; i < bar_width; ++i) line += i < filled ? '=' : (i == filled ? '>' : ' ');
    line += "] ";
  }
  char buf[128];
  std::snprintf(buf, sizeof(buf), "%3d%%  ", static_cast<int>(fraction * 100));
  line += buf;
  line += HumanBytes(done) + " / " + HumanBytes(total) + "  ";
  line += HumanBytes(static_cast<uint64_t>(rate)) + "/s  ETA ";
  line += rate > 0 ? FormatDuration(static_cast<double>(total - (done < total ? done : total)) / rate)
                   : "?";
  return line;
}

void Progress::Update(uint64_t done) {
  done_ = done;
  Clock::time_point now = Clock::now();
  if (!moving_) {  // the rate counts from the first byte, not from the resolve before it
    moving_ = true;
    began_ = now;
    last_draw_ = now;
    start_ = done;
    return;
  }
  double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since >= (tty_ ? 0.1 : interval_seconds_)) Draw(now);
}

void Progress::Draw(Clock::time_point now) {
  last_draw_ = now;
  std::string text = Format(done_, total_, Rate(now), tty_ ? 30 : 0);
  if (tty_) {
    std::fprintf(ui_->out(), "\r\033[K%s %s", label_.c_str(), text.c_str());
    std::fflush(ui_->out());
    ui_->set_bar_open(true);
  } else {
    ui_->Info(label_ + ": " + text);
  }
}

void Progress::Finish() {
  if (finished_) return;
  finished_ = true;
  Clock::time_point now = Clock::now();
  if (tty_) {
    Draw(now);
    std::fputc('\n', ui_->out());
    std::fflush(ui_->out());
    ui_->set_bar_open(false);
  }
  ui_->Log(label_ + ": " + Format(done_, total_, Rate(now), 0));
}

}  // namespace ds4setup
