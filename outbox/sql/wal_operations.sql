-- Operations on the WAL relay's replication slot and publication (outbox_status,
-- outbox_wal_retire). Loaded by outbox.operations.wal_status.

-- name: slot
-- The slot's state and the WAL PostgreSQL keeps for it. restart_lsn is the oldest WAL the
-- slot may still need: everything from there on stays on disk (retained_bytes).
-- confirmed_flush_lsn is where the reader confirmed it has read to (unconfirmed_bytes).
-- Both are NULL for a slot whose WAL was removed (wal_status 'lost').
SELECT
    slot.slot_name,
    slot.plugin,
    slot.slot_type,
    slot.database,
    slot.active,
    slot.active_pid,
    slot.wal_status,
    pg_wal_lsn_diff(pg_current_wal_lsn(), slot.restart_lsn)::bigint AS retained_bytes,
    pg_wal_lsn_diff(pg_current_wal_lsn(), slot.confirmed_flush_lsn)::bigint
        AS unconfirmed_bytes
FROM pg_replication_slots AS slot
WHERE slot.slot_name = %(slot_name)s;

-- name: publication_exists
SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %(publication)s);

-- name: table_exists
SELECT to_regclass(%(table)s) IS NOT NULL;

-- name: current_database
SELECT current_database();

-- name: terminate_backend
SELECT pg_terminate_backend(%(pid)s);

-- name: drop_slot
SELECT pg_drop_replication_slot(%(slot_name)s);

-- name: wal_level
SELECT current_setting('wal_level');

-- The offsets of one slot's relay in Debezium's JDBC store ({table}: the quoted table name).
-- name: count_offsets
SELECT count(*) FROM {table} WHERE starts_with(offset_key, %(prefix)s);

-- name: delete_offsets
DELETE FROM {table} WHERE starts_with(offset_key, %(prefix)s);

-- name: any_offsets
SELECT EXISTS (SELECT 1 FROM {table});
