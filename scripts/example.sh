#!/usr/bin/env bash
# The example shop end to end, on the path the product describes: a real HTTP request places
# an order (order, stock and outbox row in one transaction), a Celery worker with beat relays
# the outbox row to RabbitMQ, and the shipping consumer processes it exactly once.
# Usage: bash scripts/example.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/prepare.sh
source scripts/prepare.sh
prepare_environment

PORT=${EXAMPLE_PORT:-8765}
SERVER_LOG=.venv/example-server.log
CELERY_LOG=.venv/example-celery.log
.venv/bin/python scripts/create_database.py
.venv/bin/python manage.py migrate --verbosity 0

# Each background process leads its own process group, so stopping it also stops its
# children (the Celery pool and beat).
background=()
stop_background() {
  local pid
  for pid in "${background[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${background[@]}"; do
    for _ in $(seq 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap stop_background EXIT

setsid .venv/bin/python manage.py runserver "127.0.0.1:$PORT" --noreload >"$SERVER_LOG" 2>&1 &
background+=("$!")
# beat keeps its state file in .venv, out of the working tree
setsid .venv/bin/celery -A example_project worker --beat --loglevel=info \
  --schedule .venv/celerybeat-schedule >"$CELERY_LOG" 2>&1 &
background+=("$!")
echo "example: started the Django server on 127.0.0.1:$PORT and a Celery worker with beat" \
  "(celery -A example_project worker --beat; log: $CELERY_LOG)"
if ! wait_for_port "$PORT" 30; then
  echo "example: ERROR: the Django server did not start; see $SERVER_LOG" >&2
  exit 1
fi

# The consumer's queue must exist before anything is published: RabbitMQ hands back a
# message that no queue is bound for.
echo "example: python manage.py outbox_consume shipping --declare-only"
.venv/bin/python manage.py outbox_consume shipping --declare-only

if ! .venv/bin/python manage.py shop_demo --url "http://127.0.0.1:$PORT"; then
  echo "example: ERROR: the demo failed; last lines of the Celery worker's log:" >&2
  tail -n 30 "$CELERY_LOG" >&2
  exit 1
fi
echo "example: the Celery worker's runs that published (from $CELERY_LOG):"
grep -E 'Task outbox\.tasks\.publish_outbox\[[^]]+\] succeeded in [^ ]+: [1-9]' "$CELERY_LOG" |
  sed 's/^/  /'
