#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the project from this repository with the pinned
# requirements. Re-running is cheap: it reinstalls only when the requirements or
# pyproject.toml changed. Source it to get $VENV_PYTHON.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO_ROOT/.venv"
VENV_PYTHON="$VENV/bin/python"

find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "bootstrap: ERROR: Python 3.11 or newer is needed (python3.11 / python3 on PATH)" >&2
  return 1
}

bootstrap_venv() {
  local stamp="$VENV/.installed" wanted
  wanted=$(cat "$REPO_ROOT/requirements/"*.txt "$REPO_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
  if [ -x "$VENV_PYTHON" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    return 0
  fi
  if [ ! -x "$VENV_PYTHON" ]; then
    local python
    python=$(find_python)
    echo "bootstrap: creating $VENV with $python" >&2
    "$python" -m venv "$VENV"
  fi
  echo "bootstrap: installing pinned requirements and the project (editable)" >&2
  local log="$VENV/install.log"
  if ! {
    "$VENV_PYTHON" -m pip install --upgrade pip &&
      "$VENV_PYTHON" -m pip install -r "$REPO_ROOT/requirements/test.txt" &&
      "$VENV_PYTHON" -m pip install --no-deps -e "$REPO_ROOT"
  } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "bootstrap: ERROR: installing into $VENV failed (full log: $log)" >&2
    return 1
  fi
  echo "$wanted" >"$stamp"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  bootstrap_venv
fi
