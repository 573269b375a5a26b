// Status and Result<T> for ds4-setup: the same value types the engine uses (errors are
// values whose message names what failed), shared header-only so that the installer
// still uses the engine only through its programs.
//
// Thread-safety: immutable values; see engine/common/status.h.
#pragma once

#include "../engine/common/status.h"

namespace ds4setup {
using ds4::Result;
using ds4::Status;
}  // namespace ds4setup
