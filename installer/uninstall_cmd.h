// `ds4-setup uninstall [--prefix DIR] [--purge-models] [--yes]`: removes what install
// created: stops and removes the service (systemd unit, or the detached server), the
// ds4 user when install created it, the engine builds, logs, KV and state under the
// prefix, and the prefix itself when that leaves it empty. Model files are kept unless
// --purge-models. Asks first (see confirm.h).
//
// Only the entries install creates are removed, so a prefix shared with other files
// (e.g. --prefix /usr/local) keeps them.
//
// Thread-safety: changes the system; one thread.
#pragma once

#include <string>
#include <vector>

#include "pipeline.h"

namespace ds4setup {

// The entries directly under the prefix that install creates (and uninstall removes).
const std::vector<std::string>& PrefixEntries();

int RunUninstall(Context& context);

}  // namespace ds4setup
