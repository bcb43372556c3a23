-- The relay's SQL, one named query per block ("-- name: <name>" starts a block).
-- Loaded by outbox/common/sql.py (load_queries); parameters use the %(name)s style of Django's cursor.

-- name: insert_message
-- outbox.publish(): one row, written with this prepared statement rather than Model.save(),
-- whose per-call SQL compilation cost about as much as the insert itself. The trigger of
-- migration 0001_initial assigns the position, returned with the id. The timestamps come from
-- the database's clock, the one the claim compares them with (the application's may be off).
INSERT INTO outbox_message (
    message_id, event_type, routing_key, exchange, aggregate_type, aggregate_id,
    ordering_key, payload, headers, status, attempts, next_attempt_at, last_error,
    created_at, published_at, lease_owner, lease_expires_at
) VALUES (
    %(message_id)s, %(event_type)s, %(routing_key)s, %(exchange)s, %(aggregate_type)s,
    %(aggregate_id)s, %(ordering_key)s, %(payload)s::jsonb, %(headers)s::jsonb, %(status)s,
    %(attempts)s, statement_timestamp(), %(last_error)s, statement_timestamp(),
    %(published_at)s, %(lease_owner)s, %(lease_expires_at)s
)
RETURNING id, position, created_at;

-- name: claim
-- Lease up to %(limit)s ready, due rows that no other relay holds, oldest position first.
-- A row with an ordering key is taken only when no older row of its key is still unpublished
-- (ready, leased by a relay, or failed): at most one row per key is ever in flight, so a row
-- can neither overtake an older one nor be overtaken by a newer one. SKIP LOCKED keeps
-- concurrent relays from queueing behind each other's claim; the lease is what keeps them
-- apart afterwards, since this transaction commits before anything is published.
WITH claimable AS (
    SELECT candidate.id
    FROM outbox_message AS candidate
    WHERE candidate.status = 'ready'
      AND candidate.next_attempt_at <= now()
      AND (candidate.lease_expires_at IS NULL OR candidate.lease_expires_at < now())
      AND (
          candidate.ordering_key = ''
          OR NOT EXISTS (
              SELECT 1
              FROM outbox_message AS older
              WHERE older.ordering_key = candidate.ordering_key
                AND older.status <> 'published'
                AND older.position < candidate.position
          )
      )
    ORDER BY candidate.position
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox_message AS message
SET lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
-- "= ANY(ARRAY(...))" makes the planner look the claimed ids up by primary key; a join with
-- the CTE was planned as a hash join over a sequential scan of the whole table.
WHERE message.id = ANY(ARRAY(SELECT id FROM claimable))
-- Column names are the fields of outbox.relay.store.ClaimedMessage (read by name).
RETURNING message.id, message.message_id, message.event_type, message.routing_key,
    message.exchange, message.aggregate_type, message.aggregate_id,
    message.payload::text AS payload_json, message.headers::text AS headers,
    message.created_at, message.position, message.attempts;

-- name: mark_published
-- Confirmed by the broker: published, whoever holds the lease now (a slow relay whose lease
-- expired still delivered the message; the fact is recorded once).
UPDATE outbox_message
SET status = 'published', published_at = now(), lease_owner = '', lease_expires_at = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'ready';

-- name: mark_published_unroutable
-- ON_UNROUTABLE = "record": the broker accepted and dropped the message because no queue was
-- bound for it. Published, with the drop kept in last_error as the trace.
UPDATE outbox_message AS message
SET status = 'published', published_at = now(), lease_owner = '', lease_expires_at = NULL,
    last_error = dropped.error
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS dropped(id, error)
WHERE message.id = dropped.id AND message.status = 'ready';

-- name: schedule_retry
-- Refused by the broker (nack, unroutable): one attempt used. The next one waits for an
-- exponential backoff, capped, with "equal jitter" (between half and all of the delay) so
-- that rows refused together do not come back together. The last allowed attempt ends the
-- row as failed. Only the lease holder counts the attempt, so a relay whose lease expired
-- cannot charge a row twice.
UPDATE outbox_message AS message
SET attempts = message.attempts + 1,
    last_error = refused.error,
    status = CASE
        WHEN message.attempts + 1 >= %(max_attempts)s THEN 'failed' ELSE 'ready'
    END,
    next_attempt_at = now() + make_interval(
        secs => least(%(backoff_max)s, %(backoff)s * power(2, message.attempts))
            * (0.5 + random() / 2)
    ),
    lease_owner = '',
    lease_expires_at = NULL
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS refused(id, error)
WHERE message.id = refused.id
  AND message.status = 'ready'
  AND message.lease_owner = %(owner)s
RETURNING message.id, message.status;

-- name: release
-- Not sent or not answered because the broker was unreachable: the rows go back as they
-- were, attempts unchanged, for any relay to take again.
UPDATE outbox_message
SET lease_owner = '', lease_expires_at = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'ready' AND lease_owner = %(owner)s;
