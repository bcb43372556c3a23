#!/usr/bin/env bash
# Make sure PostgreSQL, RabbitMQ and Redis answer on localhost; start any that is down.
# Exits non-zero with a message naming the service when one cannot be reached or started.
# Then, for the WAL relay's tests (skipped, with the reason, where these cannot be had): a Java
# runtime (Debian's openjdk-17-jre-headless, installed with apt-get when java is missing) and
# PostgreSQL at wal_level = logical (set with ALTER SYSTEM and a restart, only when needed).
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
  version=$(postgresql_version)
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

postgresql_version() {
  ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1
}

restart_postgresql() {
  command -v pg_ctlcluster >/dev/null || return 1
  local version
  version=$(postgresql_version)
  [ -n "$version" ] || return 1
  pg_ctlcluster --skip-systemctl-redirect "$version" main restart
}

# psql as the test settings connect (OUTBOX_DB_HOST/PORT/USER/PASSWORD), to database postgres.
psql_admin() {
  PGPASSWORD="${OUTBOX_DB_PASSWORD:-}" psql -X -q -v ON_ERROR_STOP=1 \
    -h "${OUTBOX_DB_HOST:-127.0.0.1}" -p "${OUTBOX_DB_PORT:-5432}" \
    -U "${OUTBOX_DB_USER:-postgres}" -d postgres "$@"
}

# The WAL relay reads logical decoding, which needs wal_level = logical; the setting takes
# effect only on a restart, so PostgreSQL is restarted, once, when (and only when) it is not
# logical yet. Not fatal: the WAL tests skip with the reason on a server left at replica.
ensure_logical_wal() {
  local restarter=${1:-restart_postgresql} port=${OUTBOX_DB_PORT:-5432} level
  command -v psql >/dev/null || return 0
  if ! level=$(psql_admin -Atc "SHOW wal_level" 2>/dev/null); then
    echo "services: WARNING: cannot read PostgreSQL's wal_level; the WAL relay tests may skip" >&2
    return 0
  fi
  [ "$level" = logical ] && return 0
  echo "services: PostgreSQL runs at wal_level = $level; the WAL relay tests need logical:" \
    "ALTER SYSTEM SET wal_level = logical, then restarting PostgreSQL (a few seconds)" >&2
  if ! psql_admin -c "ALTER SYSTEM SET wal_level = logical" >&2 || ! "$restarter" >&2 ||
    ! wait_for_port "$port" 30; then
    echo "services: WARNING: could not set wal_level = logical and restart PostgreSQL" \
      "(superuser and pg_ctlcluster needed); the WAL relay tests will be skipped" >&2
    return 0
  fi
  for _ in $(seq 30); do
    level=$(psql_admin -Atc "SHOW wal_level" 2>/dev/null) && break
    sleep 1
  done
  if [ "$level" = logical ]; then
    echo "services: PostgreSQL is at wal_level = logical" >&2
  else
    echo "services: WARNING: PostgreSQL restarted but wal_level is still ${level:-unknown}" >&2
  fi
}

# The embedded Debezium engine of the WAL relay runs on Java 17. Not fatal: without it the
# WAL relay tests skip with the reason.
ensure_java() {
  command -v java >/dev/null && return 0
  echo "services: java is missing (the WAL relay's Debezium engine needs Java 17);" \
    "installing openjdk-17-jre-headless with apt-get" >&2
  if command -v apt-get >/dev/null && install_java_package && command -v java >/dev/null; then
    echo "services: java is installed" >&2
    return 0
  fi
  echo "services: WARNING: could not install openjdk-17-jre-headless with apt-get (is this" \
    "Debian or Ubuntu, and are we root?); the WAL relay tests will be skipped" >&2
  return 0
}

install_java_package() {
  apt_install openjdk-17-jre-headless && return 0
  # A fresh machine's package lists may be missing or stale.
  apt-get update -q >&2 && apt_install openjdk-17-jre-headless
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

ensure_all_services() {
  ensure_service PostgreSQL 5432 start_postgresql 30
  ensure_service RabbitMQ 5672 start_rabbitmq 90
  ensure_service Redis 6379 start_redis 15
  ensure_logical_wal
  ensure_java
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_all_services
fi
