# Helpers for the ds4-setup end-to-end tests (sourced by tests/e2e/download_*_test.sh
# and host_*_test.sh). Every test gets its own scratch directory and, when it needs
# one, its own fake hub on 127.0.0.1 at a free port.
set -euo pipefail

SOURCE_DIR=${DS4_SOURCE_DIR:?DS4_SOURCE_DIR not set}
SETUP=${DS4_BIN_DIR:?DS4_BIN_DIR not set}/ds4-setup
if [ ! -x "$SETUP" ]; then
  echo "SKIP: $SETUP not built"
  exit 77
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds4-e2e.XXXXXX")
HUB_PID=""
cleanup() {
  if [ -n "$HUB_PID" ]; then kill "$HUB_PID" 2>/dev/null || true; wait "$HUB_PID" 2>/dev/null || true; fi
  if [ -n "${EXTRA_CLEANUP:-}" ]; then eval "$EXTRA_CLEANUP" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Fast retries so fault tests take seconds, small chunks so a file spans many requests.
export DS4_FETCH_INITIAL_BACKOFF=0.05 DS4_FETCH_MAX_BACKOFF=0.2 DS4_FETCH_STALL_SECONDS=10
export DS4_FETCH_CHUNK_BYTES=$((1 << 20)) DS4_PROGRESS_INTERVAL=1
unset HF_TOKEN HF_HOME || true
export HOME="$WORK/home"; mkdir -p "$HOME"

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# make_payload PATH MIB: random bytes.
make_payload() { head -c "$(($2 << 20))" /dev/urandom > "$1"; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

# write_manifest DIR PAYLOAD [NAME]: models.yaml with one base model "test" served as
# file NAME (default test.gguf) from the fake hub, plus the real hosts.yaml.
write_manifest() {
  local dir=$1 payload=$2 name=${3:-test.gguf}
  mkdir -p "$dir"
  cp "$SOURCE_DIR/manifests/hosts.yaml" "$dir/hosts.yaml"
  cat > "$dir/models.yaml" <<YAML
models:
  test:
    kind: base
    default: true
    repo: test-org/test-repo
    revision: rev1
    file: $name
    bytes: $(size_of "$payload")
    sha256: $(sha_of "$payload")
YAML
}

# hub_config JSON: (re)writes the fake hub's config; the hub re-reads it on change.
hub_config() { printf '%s\n' "$1" > "$WORK/hub.json.tmp"; mv "$WORK/hub.json.tmp" "$WORK/hub.json"; sleep 0.02; }

hub_start() {
  hub_config "$1"
  python3 "$SOURCE_DIR/tests/fakehub/fakehub.py" --config "$WORK/hub.json" \
    --port-file "$WORK/hub.port" 2>"$WORK/hub.log" &
  HUB_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/hub.port" ] && break; sleep 0.05; done
  [ -s "$WORK/hub.port" ] || fail "fake hub did not start: $(cat "$WORK/hub.log")"
  export HF_ENDPOINT="http://127.0.0.1:$(cat "$WORK/hub.port")"
}

# hub_stat EXPR [reset]: a Python expression over the stats dict `s`, e.g. 's["bytes_served"]'.
hub_stat() {
  python3 - "$HF_ENDPOINT" "$1" "${2:-}" <<'PY'
import json, sys, urllib.request
base, expr, reset = sys.argv[1], sys.argv[2], sys.argv[3]
s = json.load(urllib.request.urlopen(base + "/_stats" + ("?reset=1" if reset else "")))
print(eval(expr))
PY
}
hub_reset() { hub_stat 0 reset > /dev/null; }

# setup CMD ARGS...: runs ds4-setup with the test manifests; output in $WORK/out.txt,
# exit status in $RC.
setup() {
  set +e
  "$SETUP" "$@" --model "${MODEL:-test}" --manifests "$WORK/manifests" --log "$WORK/setup.log" >"$WORK/out.txt" 2>&1
  RC=$?
  set -e
  cat "$WORK/out.txt"
}
