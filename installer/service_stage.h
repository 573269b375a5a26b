// ServiceStage: installs ds4-server as the `ds4` systemd service (unit rendered from
// systemd/ds4.service, dedicated system user in the video/render groups, KV directory
// the only writable path), and with --start enables and starts it, waits for
// GET /v1/models and runs the chat API smoke check against it.
//
// Where systemd is not running (containers, CI: no /run/systemd/system) or ds4-setup is
// not root, no unit is installed: --start then starts ds4-server detached, with a pid file
// and a log file under the prefix, and says so. `status` and `uninstall` handle both.
// The unit is rendered to <prefix>/etc/ds4.service in both cases.
//
// Test hook: DS4_NO_SYSTEMD=1 behaves as a machine without systemd.
//
// Thread-safety: changes the system; one thread.
#pragma once

#include <string>
#include <vector>

#include "install_state.h"
#include "pipeline.h"
#include "status.h"
#include "unit_file.h"

namespace ds4setup {

constexpr const char* kServiceName = "ds4";
constexpr const char* kSystemUnitPath = "/etc/systemd/system/ds4.service";

// systemd is running as init (and DS4_NO_SYSTEMD is not set).
bool SystemdRunning();

// The GPU device groups that exist on this host, of "video" and "render".
std::vector<std::string> ExistingGpuGroups();

// Where the service's files go under the prefix.
std::string ServerPidFile(const std::string& prefix);  // <prefix>/run/ds4-server.pid
std::string ServerLogFile(const std::string& prefix);  // <prefix>/logs/ds4-server.log
std::string KvDir(const std::string& prefix);          // <prefix>/kv

// The unit configuration for this install (absolute paths under the prefix).
UnitConfig UnitConfigFor(const Context& context);

Status ServiceStage(Context& context);

// `ds4-setup unit [install flags]`: probes the host (for the profile), then prints the unit
// that install would write for these flags, changing nothing. Returns the exit code.
int RunUnitCommand(Context& context);

}  // namespace ds4setup
