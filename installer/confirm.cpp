#include "confirm.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>

namespace ds4setup {

bool Confirm(Ui& ui, const std::string& question, bool yes) {
  if (yes) {
    ui.Log(question + " [--yes]");
    return true;
  }
  // DS4_NO_TTY=1 (tests) behaves as a machine without a terminal.
  const char* no_tty = std::getenv("DS4_NO_TTY");
  int tty = (no_tty && *no_tty && *no_tty != '0') ? -1 : open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (tty < 0) {
    ui.Info(question + " -- no terminal to ask on: going ahead (as with --yes)");
    return true;
  }
  const std::string prompt = question + " [y/N] ";
  ssize_t written = write(tty, prompt.data(), prompt.size());
  (void)written;
  std::string reply;
  char c = 0;
  while (read(tty, &c, 1) == 1 && c != '\n') reply += c;
  close(tty);
  bool agreed = !reply.empty() && (reply[0] == 'y' || reply[0] == 'Y');
  ui.Log(question + " -> " + (agreed ? "yes" : "no"));
  return agreed;
}

}  // namespace ds4setup
