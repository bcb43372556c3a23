#!/usr/bin/env bash
# The browser the admin's browser test drives: Debian's chromium (Playwright's own browser
# downloads are not used). Source it and call ensure_chromium; it installs only when missing.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

ensure_chromium() {
  if [ -x "$CHROMIUM" ]; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "browser: ERROR: $CHROMIUM is missing; install Debian's chromium as root (apt-get install -y chromium)" >&2
      return 1
    fi
    sudo="sudo -n"
  fi
  echo "browser: installing Debian's chromium for the admin browser test" >&2
  local log=/tmp/outbox-chromium-install.log
  # The package lists may be missing on a fresh machine: update once, then retry.
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >"$log" 2>&1; then
    if ! { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } >>"$log" 2>&1; then
      tail -n 20 "$log" >&2
      echo "browser: ERROR: 'apt-get install -y chromium' failed (log: $log); the browser test needs $CHROMIUM" >&2
      return 1
    fi
  fi
  [ -x "$CHROMIUM" ] || { echo "browser: ERROR: chromium installed but $CHROMIUM is missing" >&2; return 1; }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_chromium
fi
