// `ds4-setup status`: what is installed under the prefix (engine version and the build
// kept for rollback), the model files and their verification state, the service state
// (systemd unit or detached process) and whether the endpoint answers.
// Exit status: 0 when installed and, if the server was started, answering; 1 when
// nothing is installed; kExitService when the server should run but does not answer.
//
// Thread-safety: read-only; one thread.
#pragma once

#include "pipeline.h"

namespace ds4setup {

int RunStatus(Context& context);

}  // namespace ds4setup
