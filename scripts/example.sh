#!/usr/bin/env bash
# The example shop end to end: set-up, a real HTTP request places an order, then the outbox
# shows the integration event it wrote. Usage: bash scripts/example.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/prepare.sh
source scripts/prepare.sh
prepare_environment

PORT=${EXAMPLE_PORT:-8765}
.venv/bin/python scripts/create_database.py
.venv/bin/python manage.py migrate --verbosity 0

.venv/bin/python manage.py runserver "127.0.0.1:$PORT" --noreload >.venv/example-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
if ! wait_for_port "$PORT" 30; then
  echo "example: ERROR: the Django server did not start; see .venv/example-server.log" >&2
  exit 1
fi

.venv/bin/python manage.py shop_demo --url "http://127.0.0.1:$PORT"
