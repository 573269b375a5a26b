// Confirm: asks the person at the terminal before ds4-setup changes the system.
//
// Rules (docs/install.md): with --yes nothing is asked. Otherwise the question goes to
// the controlling terminal (/dev/tty), which works under `curl ... | bash` where stdin is
// the script. Without a terminal (CI, cron, ssh without -t) nothing is asked: the run goes
// ahead as with --yes and says so, since the command line itself asked for the change.
//
// Thread-safety: one question at a time; call from the pipeline's thread.
#pragma once

#include <string>

#include "ui.h"

namespace ds4setup {

// True to go ahead. `question` is one line without the trailing "[y/N]".
bool Confirm(Ui& ui, const std::string& question, bool yes);

}  // namespace ds4setup
