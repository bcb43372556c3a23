#!/usr/bin/env bash
# Make sure PostgreSQL, RabbitMQ and Redis answer on localhost; start any that is down.
# Exits non-zero with a message naming the service when one cannot be reached or started.
# Sourced or run: `bash scripts/services.sh`.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 seconds=$2
  for _ in $(seq "$seconds"); do
    port_open "$port" && return 0
    sleep 1
  done
  return 1
}

start_postgresql() {
  command -v pg_ctlcluster >/dev/null || return 1
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || return 1
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

start_rabbitmq() {
  command -v rabbitmq-server >/dev/null || return 1
  rabbitmq-server -detached
}

start_redis() {
  command -v redis-server >/dev/null || return 1
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

ensure_service() {
  local name=$1 port=$2 starter=$3 wait_seconds=$4
  if port_open "$port"; then
    return 0
  fi
  echo "services: $name is not answering on 127.0.0.1:$port; starting it" >&2
  if ! "$starter" >&2; then
    echo "services: ERROR: $name is down on 127.0.0.1:$port and could not be started" \
      "(is its Debian package installed, and are we root?)" >&2
    return 1
  fi
  if ! wait_for_port "$port" "$wait_seconds"; then
    echo "services: ERROR: started $name but it did not answer on 127.0.0.1:$port" \
      "within ${wait_seconds}s" >&2
    return 1
  fi
  echo "services: $name is up" >&2
}

ensure_all_services() {
  ensure_service PostgreSQL 5432 start_postgresql 30
  ensure_service RabbitMQ 5672 start_rabbitmq 90
  ensure_service Redis 6379 start_redis 15
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_all_services
fi
