-- Queries of the event store that the ORM cannot say. Each starts with "-- name: <name>";
-- parameters are named (%(name)s).

-- name: create_stream
-- A new aggregate: only the first save may create its version row. A concurrent first save
-- waits for ours and then inserts nothing, which the caller reports as a conflict.
INSERT INTO domain_events_aggregateversion (aggregate_type, aggregate_id, version)
VALUES (%(aggregate_type)s, %(aggregate_id)s, %(new_version)s)
ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING
RETURNING version;

-- name: advance_stream
-- Optimistic concurrency: the row moves only from the version the aggregate was loaded at.
-- A concurrent save blocks on the row lock, then finds the version changed and matches nothing.
UPDATE domain_events_aggregateversion
SET version = %(new_version)s
WHERE aggregate_type = %(aggregate_type)s
  AND aggregate_id = %(aggregate_id)s
  AND version = %(expected_version)s
RETURNING version;

-- name: append_events
-- All events of one save in one statement, sent as one JSON array of rows: a single
-- parameter is far cheaper for the driver to send than one array per column.
-- position, transaction_id and recorded_at come from the column defaults.
INSERT INTO domain_events_storedevent
    (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data,
     metadata, triggering_message_id, occurred_at)
SELECT e.event_id, %(aggregate_type)s::text, %(aggregate_id)s::text, e.version, e.event_type,
       e.schema_version, e.data, %(metadata)s::jsonb, %(triggering_message_id)s::text,
       e.occurred_at
FROM jsonb_to_recordset(%(events)s::jsonb) AS e (
    event_id uuid,
    version bigint,
    event_type text,
    schema_version smallint,
    data jsonb,
    occurred_at timestamptz
)
ORDER BY e.version;

-- name: command_seen
-- Runs after the version row is locked by this transaction, so an earlier save of the same
-- command has either committed (and is seen here) or failed.
SELECT EXISTS (
    SELECT 1 FROM domain_events_storedevent
    WHERE aggregate_type = %(aggregate_type)s
      AND aggregate_id = %(aggregate_id)s
      AND triggering_message_id = %(triggering_message_id)s
);

-- name: save_snapshot
INSERT INTO domain_events_snapshot
    (aggregate_type, aggregate_id, version, schema_version, state, taken_at)
VALUES (%(aggregate_type)s, %(aggregate_id)s, %(version)s, %(schema_version)s, %(state)s::jsonb, now())
ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
SET version = EXCLUDED.version,
    schema_version = EXCLUDED.schema_version,
    state = EXCLUDED.state,
    taken_at = EXCLUDED.taken_at;

-- name: read_all
-- Followers read in (transaction_id, position) order and only events of transactions older
-- than every transaction still running (the snapshot's xmin). A transaction that commits late
-- has an id at least that xmin until it ends, so none of its events can later appear before a
-- checkpoint a follower has passed.
SELECT position, transaction_id::text::bigint AS transaction_id, aggregate_type, aggregate_id, version,
       event_type, schema_version, event_id, occurred_at, data, metadata,
       triggering_message_id, recorded_at
FROM domain_events_storedevent
WHERE (transaction_id, position) > (%(transaction_id)s::text::xid8, %(position)s)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, position
LIMIT %(limit)s;

-- name: stream_events
-- One aggregate's audit trail, oldest first: the same columns as read_all.
SELECT position, transaction_id::text::bigint AS transaction_id, aggregate_type, aggregate_id, version,
       event_type, schema_version, event_id, occurred_at, data, metadata,
       triggering_message_id, recorded_at
FROM domain_events_storedevent
WHERE aggregate_type = %(aggregate_type)s AND aggregate_id = %(aggregate_id)s
ORDER BY version;

-- name: count_after
SELECT count(*)
FROM domain_events_storedevent
WHERE (transaction_id, position) > (%(transaction_id)s::text::xid8, %(position)s);
