#!/usr/bin/env bash
# ds4-spark installer: DeepSeek V4 Flash with the bundled ds4 engine on an NVIDIA DGX Spark.
#
#   curl -sSL https://raw.githubusercontent.com/ds4-spark/ds4-spark/main/install.sh | bash -s -- --with-mtp --start
#
# What it does: checks that this is Debian or Ubuntu, installs the build dependencies with
# apt (sudo when not root; it says which packages first), gets the ds4-spark source (a git
# clone of a pinned ref; the local tree in DS4_SPARK_SRC; or, run as ./install.sh from a
# checkout, that checkout), builds ds4-setup with CMake
# and runs `ds4-setup install` with every argument given here (--with-mtp, --start,
# --demo, --prefix DIR, --yes, ...; `ds4-setup --help` lists them). ds4-setup then checks
# the host, downloads and verifies the model, builds the engine, smoke-tests it and
# installs the service. See docs/install.md.
#
# Environment:
#   DS4_SPARK_SRC    use this ds4-spark source tree instead of cloning (tests, offline)
#   DS4_SPARK_REPO   git URL to clone (default below)
#   DS4_SPARK_REF    git tag or branch to check out (default: the pinned release)
#   DS4_SPARK_JOBS   parallel build jobs (default: number of CPUs)
#
# The whole script is one function called on the last line: a truncated download runs
# nothing.

DS4_SPARK_DEFAULT_REPO="https://github.com/ds4-spark/ds4-spark.git"
DS4_SPARK_PINNED_REF="v0.1.0"

# Debian packages that building ds4-setup and the engine needs.
DS4_SPARK_PACKAGES="build-essential cmake git pkg-config ca-certificates libcli11-dev \
libyaml-cpp-dev libcurl4-openssl-dev libssl-dev nlohmann-json3-dev libcpp-httplib-dev"

status() { printf '>>> %s\n' "$*"; }
warning() { printf 'WARNING: %s\n' "$*" >&2; }
error() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

# Sets SUDO to "" when root, else "sudo" (and says so once).
choose_sudo() {
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || error "this step needs root: run as root or install sudo"
    SUDO="sudo"
  fi
}

check_os() {
  [ "$(uname -s)" = "Linux" ] || error "ds4-spark installs on Linux only (this is $(uname -s))"
  [ -r /etc/os-release ] || error "cannot read /etc/os-release: Debian or Ubuntu is required"
  local id id_like pretty
  # shellcheck disable=SC1091 # the host's file, read at run time
  id=$(. /etc/os-release && printf '%s' "${ID:-}")
  # shellcheck disable=SC1091
  id_like=$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")
  # shellcheck disable=SC1091
  pretty=$(. /etc/os-release && printf '%s' "${PRETTY_NAME:-$id}")
  case " $id $id_like " in
    *" debian "* | *" ubuntu "*) ;;
    *) error "unsupported distribution '$id': the installer uses apt (Debian or Ubuntu, e.g. DGX OS)" ;;
  esac
  status "Host: $(uname -m), $pretty"
}

install_packages() {
  local missing="" pkg
  for pkg in $DS4_SPARK_PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing="$missing $pkg"
    fi
  done
  if [ -z "$missing" ]; then
    status "Build dependencies are installed"
    return
  fi
  choose_sudo
  status "Installing build dependencies with apt${SUDO:+ (via sudo)}:$missing"
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; then
    error "apt-get update failed"
  fi
  # shellcheck disable=SC2086 # $missing is a list of words
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; then
    error "apt-get could not install:$missing"
  fi
}

# The value of --prefix in the arguments (ds4-setup's default otherwise).
prefix_from_args() {
  local prefix="/opt/ds4"
  while [ $# -gt 0 ]; do
    case "$1" in
      --prefix) [ $# -ge 2 ] && prefix="$2" && shift ;;
      --prefix=*) prefix="${1#--prefix=}" ;;
    esac
    shift
  done
  printf '%s' "$prefix"
}

# Runs "$@" as root only when the prefix is not writable by this user.
as_prefix_owner() {
  if [ -n "$PREFIX_SUDO" ]; then
    "$PREFIX_SUDO" "$@"
  else
    "$@"
  fi
}

choose_prefix_sudo() {
  local dir="$1"
  PREFIX_SUDO=""
  [ "$(id -u)" -eq 0 ] && return
  # The nearest existing ancestor decides whether we can create the prefix.
  while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
  if [ ! -w "$dir" ]; then
    choose_sudo
    PREFIX_SUDO="$SUDO"
    status "$1 is not writable by $(id -un): using sudo to install there"
  fi
}

# The source tree this script sits in, when it is run as a file from a checkout
# (`./install.sh`); empty when it is piped from curl.
script_tree() {
  local script="${BASH_SOURCE[0]:-}" dir
  [ -n "$script" ] && [ -f "$script" ] || return 0
  dir=$(cd "$(dirname "$script")" && pwd)
  if [ -f "$dir/CMakeLists.txt" ] && [ -d "$dir/installer" ] && [ -d "$dir/engine" ]; then
    printf '%s' "$dir"
  fi
}

# Sets SOURCE_DIR: DS4_SPARK_SRC, else the checkout this script was run from, else a
# clone of the pinned ref in <prefix>/src.
get_source() {
  local prefix="$1"
  if [ -z "${DS4_SPARK_SRC:-}" ]; then
    DS4_SPARK_SRC=$(script_tree)
  fi
  if [ -n "${DS4_SPARK_SRC:-}" ]; then
    if [ ! -f "$DS4_SPARK_SRC/CMakeLists.txt" ] || [ ! -d "$DS4_SPARK_SRC/installer" ]; then
      error "DS4_SPARK_SRC=$DS4_SPARK_SRC is not a ds4-spark source tree (no CMakeLists.txt and installer/)"
    fi
    SOURCE_DIR=$(cd "$DS4_SPARK_SRC" && pwd)
    status "Using the local source tree $SOURCE_DIR"
    return
  fi
  local repo="${DS4_SPARK_REPO:-$DS4_SPARK_DEFAULT_REPO}"
  local ref="${DS4_SPARK_REF:-$DS4_SPARK_PINNED_REF}"
  SOURCE_DIR="$prefix/src"
  if [ -d "$SOURCE_DIR/.git" ]; then
    status "Updating $SOURCE_DIR to $ref"
    as_prefix_owner git -C "$SOURCE_DIR" fetch --quiet --depth 1 origin "$ref" ||
      error "git fetch of $ref from $repo failed"
    as_prefix_owner git -C "$SOURCE_DIR" checkout --quiet --force FETCH_HEAD ||
      error "git checkout of $ref failed in $SOURCE_DIR"
  else
    status "Cloning $repo at $ref into $SOURCE_DIR"
    local partial="$SOURCE_DIR.partial"
    as_prefix_owner rm -rf "$partial"
    as_prefix_owner mkdir -p "$prefix"
    # A failed clone leaves nothing behind.
    # shellcheck disable=SC2064 # expand $partial now: it is local to this function
    trap "as_prefix_owner rm -rf '$partial' 2>/dev/null || true" EXIT
    as_prefix_owner git clone --quiet --depth 1 --branch "$ref" "$repo" "$partial" ||
      error "git clone of $repo at $ref failed"
    as_prefix_owner mv "$partial" "$SOURCE_DIR"
    trap - EXIT
  fi
  # Tells `ds4-setup uninstall` that this tree was cloned by the installer.
  as_prefix_owner touch "$SOURCE_DIR/.ds4-spark-clone"
}

# Builds only the ds4-setup target into <prefix>/setup-build; sets SETUP_BIN.
build_setup() {
  local prefix="$1" build="$1/setup-build"
  local jobs="${DS4_SPARK_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  as_prefix_owner mkdir -p "$build"
  if [ ! -f "$build/CMakeCache.txt" ]; then
    status "Configuring ds4-setup"
    as_prefix_owner cmake -S "$SOURCE_DIR" -B "$build" -DCMAKE_BUILD_TYPE=Release \
      -DDS4_ENGINE=OFF -DDS4_TESTS=OFF -DDS4_CUDA=OFF >"$build/configure.log" 2>&1 ||
      error "configuring ds4-setup failed; see $build/configure.log"
  fi
  status "Building ds4-setup"
  as_prefix_owner cmake --build "$build" --target ds4-setup -j "$jobs" >"$build/build.log" 2>&1 ||
    error "building ds4-setup failed; see $build/build.log"
  SETUP_BIN="$build/bin/ds4-setup"
  [ -x "$SETUP_BIN" ] || error "the build produced no $SETUP_BIN"
}

main() {
  set -eu
  check_os
  install_packages
  local prefix
  prefix=$(prefix_from_args "$@")
  case "$prefix" in
    /*) ;;
    *) prefix="$(pwd)/$prefix" ;;
  esac
  choose_prefix_sudo "$prefix"
  get_source "$prefix"
  build_setup "$prefix"
  status "Running ds4-setup install $*"
  if [ -n "$PREFIX_SUDO" ]; then
    exec "$PREFIX_SUDO" "$SETUP_BIN" install --source-dir "$SOURCE_DIR" "$@"
  fi
  exec "$SETUP_BIN" install --source-dir "$SOURCE_DIR" "$@"
}

main "$@"
