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
-- Lease up to %(limit)s publishable rows for %(owner)s; the store sorts them by position.
--
-- Keyed rows (docs/relay.md, "How the claim works"): a loose index scan walks the distinct
-- ordering keys that have unpublished rows, starting after %(after)s (the last key this
-- relay claimed, so that keys take turns) and wrapping round to the first key. Each key costs
-- one probe for its head, its oldest unpublished row. A head that is failed, leased or not
-- due blocks the key (nothing newer may overtake it); a publishable head is locked FOR UPDATE
-- SKIP LOCKED, re-checked, and only the relay holding that lock takes the key's run: the rows
-- from the head on, in position order, while they are ready, due and unleased, at most
-- %(max_per_key)s. Locking the head alone is what keeps two relays from splitting a run,
-- without the deadlocks that locking every row of it could cause. Recursive CTEs are read on
-- demand, so the walk stops as soon as the batch is full: the cost follows the batch, not the
-- backlog behind blocked heads.
--
-- Unkeyed rows (ordering_key = '') promise no order: oldest first from their own partial
-- index, SKIP LOCKED. The two kinds share the batch: each may take half, and either takes
-- what the other leaves.
WITH RECURSIVE
-- Each step jumps to the next key in the index and reads that key's head.
keys_after_cursor(turn, ordering_key, head_id, status, next_attempt_at, lease_expires_at) AS (
    SELECT 1, first.*
    FROM (
        SELECT ordering_key, id, status, next_attempt_at, lease_expires_at
        FROM outbox_message
        WHERE status <> 'published' AND ordering_key > %(after)s
        ORDER BY ordering_key, position
        LIMIT 1
    ) AS first
    UNION ALL
    SELECT previous.turn + 1, following.*
    FROM keys_after_cursor AS previous
    CROSS JOIN LATERAL (
        SELECT ordering_key, id, status, next_attempt_at, lease_expires_at
        FROM outbox_message
        WHERE status <> 'published' AND ordering_key > previous.ordering_key
        ORDER BY ordering_key, position
        LIMIT 1
    ) AS following
),
-- The second lap, read only when the first did not fill the batch; it ends with the cursor's
-- own key, whose run may have been cut short by the previous batch.
keys_up_to_cursor(turn, ordering_key, head_id, status, next_attempt_at, lease_expires_at) AS (
    SELECT 1, first.*
    FROM (
        SELECT ordering_key, id, status, next_attempt_at, lease_expires_at
        FROM outbox_message
        WHERE status <> 'published' AND ordering_key > '' AND ordering_key <= %(after)s
        ORDER BY ordering_key, position
        LIMIT 1
    ) AS first
    UNION ALL
    SELECT previous.turn + 1, following.*
    FROM keys_up_to_cursor AS previous
    CROSS JOIN LATERAL (
        SELECT ordering_key, id, status, next_attempt_at, lease_expires_at
        FROM outbox_message
        WHERE status <> 'published'
          AND ordering_key > previous.ordering_key
          AND ordering_key <= %(after)s
        ORDER BY ordering_key, position
        LIMIT 1
    ) AS following
),
-- Every key in the order of the walk, with its head's state.
visited_keys AS (
    SELECT 1 AS lap, * FROM keys_after_cursor
    UNION ALL
    SELECT 2 AS lap, * FROM keys_up_to_cursor
),
keyed AS (
    SELECT visited.lap, visited.turn, visited.ordering_key, run.id, run.position
    FROM visited_keys AS visited
    -- Not "the oldest row that is not locked": SKIP LOCKED there would hand out the row
    -- behind a head another relay holds. The head by id, re-checked once locked (another
    -- relay may have leased it since this statement's snapshot), or nothing for this key.
    CROSS JOIN LATERAL (
        SELECT locked.id
        FROM outbox_message AS locked
        WHERE locked.id = visited.head_id
          AND locked.status = 'ready'
          AND locked.next_attempt_at <= now()
          AND (locked.lease_expires_at IS NULL OR locked.lease_expires_at < now())
        FOR UPDATE SKIP LOCKED
    ) AS locked_head
    CROSS JOIN LATERAL (
        SELECT candidate.id, candidate.position
        FROM (
            -- "unbroken": this row and every row of the key before it are publishable.
            SELECT member.id, member.position,
                bool_and(
                    member.status = 'ready'
                    AND member.next_attempt_at <= now()
                    AND (member.lease_expires_at IS NULL OR member.lease_expires_at < now())
                ) OVER (ORDER BY member.position) AS unbroken
            FROM outbox_message AS member
            WHERE member.ordering_key = visited.ordering_key AND member.status <> 'published'
            ORDER BY member.position
            LIMIT %(max_per_key)s
        ) AS candidate
        WHERE candidate.unbroken
    ) AS run
    -- A head that is failed, leased or not due blocks its key: nothing more is read for it.
    WHERE visited.status = 'ready'
      AND visited.next_attempt_at <= now()
      AND (visited.lease_expires_at IS NULL OR visited.lease_expires_at < now())
    LIMIT %(limit)s
),
unkeyed AS (
    SELECT id, position
    FROM outbox_message
    WHERE status = 'ready'
      AND ordering_key = ''
      AND next_attempt_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY position
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
keyed_share(size) AS (
    SELECT least(
        (SELECT count(*) FROM keyed),
        greatest(%(limit)s / 2, %(limit)s - (SELECT count(*) FROM unkeyed))
    )
),
-- A prefix of the walk: whole runs, and at most the last one cut short.
chosen_keyed AS (
    SELECT lap, turn, ordering_key, id
    FROM keyed
    ORDER BY lap, turn, position
    LIMIT (SELECT size FROM keyed_share)
),
chosen AS (
    SELECT id FROM chosen_keyed
    UNION ALL
    (SELECT id FROM unkeyed ORDER BY position LIMIT %(limit)s - (SELECT size FROM keyed_share))
)
UPDATE outbox_message AS message
SET lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
-- "= ANY(ARRAY(...))" makes the planner look the claimed ids up by primary key; a join with
-- the CTE was planned as a hash join over a sequential scan of the whole table. Rows behind
-- a locked head are not re-checked here: whoever holds a key's head is the only claimant of
-- its run, and dropping a row from the middle of a run would let the rows after it overtake.
WHERE message.id = ANY(ARRAY(SELECT id FROM chosen)) AND message.status <> 'published'
-- Columns, checked by name and read by position (outbox.relay.postgresql._CLAIM_COLUMNS):
-- ClaimedMessage's fields in their order, then the key the next claim starts after.
RETURNING message.id, message.message_id, message.event_type, message.routing_key,
    message.exchange, message.aggregate_type, message.aggregate_id,
    message.payload::text AS payload_json, message.headers::text AS headers,
    -- created_at as epoch seconds: Django's timestamptz loader is pure Python, about as costly
    -- per row as the rest of the row's decoding; a float8 is exact to the microsecond here.
    extract(epoch FROM message.created_at)::float8 AS created_at, message.position,
    message.attempts,
    (SELECT ordering_key FROM chosen_keyed ORDER BY lap DESC, turn DESC LIMIT 1) AS next_cursor;

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
