-- The WAL relay's SQL (outbox/relay/wal.py), one named query per block ("-- name: <name>").
-- Loaded by outbox/common/sql.py (load_queries); parameters use psycopg's %(name)s style. The
-- publication's CREATE names identifiers and is composed in wal.py with psycopg.sql instead.

-- name: try_lock
-- One WAL relay per slot: a session-level advisory lock, held on the relay's own connection
-- for as long as it reads the slot, and released by PostgreSQL when that session ends (a
-- killed relay included). The two-integer form keeps it apart from the application's single
-- bigint keys and from the outbox's own order locks; 1330992215 is b"OUTW".
SELECT pg_try_advisory_lock(1330992215, hashtext(%(slot)s));

-- name: still_connected
SELECT 1;

-- name: publication_exists
SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %(publication)s);

-- name: slot_exists
SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %(slot)s);

-- name: create_slot
-- The slot keeps every change from this moment on until the relay has confirmed it.
SELECT lsn::text FROM pg_create_logical_replication_slot(%(slot)s, 'pgoutput');

-- name: still_ready
-- Of the rows the log brought, those still waiting to be published: rows the sweep or a
-- relay before a crash already published are not sent again.
SELECT id FROM outbox_message WHERE id = ANY(%(ids)s::bigint[]) AND status = 'ready';

-- name: schedule_retry
-- Refused by the broker: one attempt used, as the polling relay's schedule_retry counts it
-- (capped exponential backoff with equal jitter, failed after the last attempt), for rows the
-- log brought: they hold no lease, so none is required, but a row some polling claim holds is
-- left to that claim. The sweep publishes the row again once it is due.
UPDATE outbox_message AS message
SET attempts = message.attempts + 1,
    last_error = refused.error,
    status = CASE
        WHEN message.attempts + 1 >= %(max_attempts)s THEN 'failed' ELSE 'ready'
    END,
    next_attempt_at = now() + make_interval(
        secs => least(%(backoff_max)s, %(backoff)s * power(2, message.attempts))
            * (0.5 + random() / 2)
    )
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS refused(id, error)
WHERE message.id = refused.id
  AND message.status = 'ready'
  AND (message.lease_expires_at IS NULL OR message.lease_expires_at < now())
RETURNING message.id, message.status;

-- name: sweep_due
-- Whether the sweep has work: a publishable row (ready, due, unleased) written more than
-- %(age)s seconds ago. The log brings every insert within moments of its commit, so such a row
-- is one the log never brings: put back to ready by a replay or a retry, or older than the slot.
SELECT EXISTS (
    SELECT 1
    FROM outbox_message
    WHERE status = 'ready'
      AND next_attempt_at <= now()
      AND created_at < now() - %(age)s * interval '1 second'
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
);

-- name: offsets_table_exists
SELECT to_regclass('outbox_wal_offsets') IS NOT NULL;

-- name: forget_offsets
-- A new slot starts where it was created: offsets stored for an older slot of the same name
-- point into WAL the server no longer has, and Debezium would refuse to start from them.
DELETE FROM outbox_wal_offsets WHERE starts_with(offset_key, %(prefix)s);
