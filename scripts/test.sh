#!/usr/bin/env bash
# The whole test suite: set-up, lint, format check, strict typing, then pytest.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/prepare.sh
source scripts/prepare.sh
prepare_environment
# shellcheck source=scripts/browser.sh
source scripts/browser.sh
ensure_chromium

echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== mypy --strict" && .venv/bin/mypy .
echo "== pytest" && .venv/bin/pytest "$@"
