#!/usr/bin/env bash
# The official `openai` npm SDK drives ds4-server on the tiny trained chat model:
# streamed and non-streamed chat completions (thinking off and on) and completions,
# streamed text == non-streamed text at temperature 0, "Paris" for the France
# question (tests/clients/openai_sdk_client.mjs). The SDK is installed with npm into
# a cache directory (DS4_NPM_CACHE_DIR, default ~/.cache/ds4-spark) on first use.
set -euo pipefail
source "$DS4_SOURCE_DIR/tests/clients/server_harness.sh"
require_server_binary
require_node
command -v npm >/dev/null || { echo "SKIP: npm is not installed"; exit 77; }

# openai 6.x: the newest major that still supports Node 20 (Debian's nodejs).
sdk_version=6
sdk_dir="${DS4_NPM_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ds4-spark}/openai-sdk-$sdk_version"
if [ ! -f "$sdk_dir/node_modules/openai/package.json" ]; then
  mkdir -p "$sdk_dir"
  echo "installing openai@$sdk_version into $sdk_dir"
  (cd "$sdk_dir" && timeout 300 npm install --no-audit --no-fund --loglevel=error \
     --no-save "openai@$sdk_version") || fail "npm install openai@$sdk_version failed"
fi
echo "openai SDK $(node -p "require('$sdk_dir/node_modules/openai/package.json').version")"

start_server
OPENAI_SDK_DIR="$sdk_dir" timeout 300 node "$DS4_SOURCE_DIR/tests/clients/openai_sdk_client.mjs" \
  "$BASE_URL" || fail "the openai SDK client failed"
stop_server
echo "PASS: the openai SDK drives ds4-server"
