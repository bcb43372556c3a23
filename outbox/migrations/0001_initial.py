"""The outbox, inbox and job tables, with the relay's triggers (positions in commit order per
ordering key, and a wake-up notification at commit). docs/relay.md ("Per-aggregate order")
has the reasoning. Squashed before the first release: one initial migration."""

import uuid

import django.utils.timezone
from django.db import migrations, models
from django.db.models.functions import Now

import outbox.common.jsontext

# Rows of one ordering key get their position only after the key's transaction-level advisory
# lock is taken, and that lock is held until commit: a second transaction writing the same key
# waits for the first to commit (or roll back) before it draws its position. Position order is
# therefore commit order per key, which the sequence-assigned id is not. The two-integer lock
# form keeps these locks out of the single-bigint key space applications use; 1330992216 is
# b"OUTX". A hash collision between two keys only makes their writers wait for each other.
#
# One lock per key would let a transaction that writes many aggregates exhaust PostgreSQL's
# shared lock table ("out of shared memory" past about max_locks_per_transaction *
# max_connections locks). So the keys are also grouped in 256 buckets (the first byte of the
# key's MD5, computable in Python too: publish_many sorts by it), and locking is two-level:
#   - the first 32 distinct keys of a transaction take the key's lock (exclusive) and then a
#     SHARED lock on its bucket (1330992194 is b"OUTB"): small writers of different keys never
#     wait for each other;
#   - from the 33rd key on, at the first row of a new bucket, the transaction switches to an
#     EXCLUSIVE lock on each row's bucket instead, which keeps out every other writer of any
#     key of that bucket, small or big, until it commits.
# Either way, two writers of one key hold conflicting locks and the second draws its position
# after the first committed. A transaction holds at most 32 key locks + 256 bucket locks. The
# key lock is taken before the shared bucket lock, so a one-key writer never holds a bucket
# lock while it waits: it cannot deadlock with a transaction that moves to buckets. Switching
# only at a bucket boundary means rows in (bucket, key) order (what publish_many sends) never
# upgrade a bucket they hold shared, so such batches do not deadlock with each other either.
# The count lives in a transaction-local setting ("count:last key lock:last bucket"), undone
# with the transaction or savepoint it was made in, like the locks.
CREATE_TRIGGERS = """
-- Room on each page for the claim's lease update: it changes no indexed column, so with free
-- space on the page it is a HOT update that writes no index entries.
ALTER TABLE outbox_message SET (fillfactor = 70);

CREATE SEQUENCE outbox_message_position_seq AS bigint;

-- The lock bucket of an ordering key; outbox.writer.order_lock_bucket is the same in Python.
CREATE FUNCTION outbox_order_lock_bucket(ordering_key text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT get_byte(decode(md5(ordering_key), 'hex'), 0)
$$;

CREATE FUNCTION outbox_message_assign_position() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    state text;
    key_lock integer;
    bucket integer;
    keys_locked integer := 0;
    last_key_lock integer;
    last_bucket integer;
BEGIN
    IF NEW.ordering_key <> '' THEN
        bucket := outbox_order_lock_bucket(NEW.ordering_key);
        state := coalesce(current_setting('outbox.order_locks', true), '');
        IF state <> '' AND state <> 'buckets' THEN
            keys_locked := split_part(state, ':', 1)::integer;
            last_key_lock := split_part(state, ':', 2)::integer;
            last_bucket := split_part(state, ':', 3)::integer;
        END IF;
        IF state = 'buckets' OR (keys_locked >= 32 AND bucket IS DISTINCT FROM last_bucket) THEN
            IF state <> 'buckets' THEN
                PERFORM set_config('outbox.order_locks', 'buckets', true);
            END IF;
            PERFORM pg_advisory_xact_lock(1330992194, bucket);
        ELSE
            key_lock := hashtext(NEW.ordering_key);
            PERFORM pg_advisory_xact_lock(1330992216, key_lock);
            PERFORM pg_advisory_xact_lock_shared(1330992194, bucket);
            IF key_lock IS DISTINCT FROM last_key_lock THEN
                keys_locked := keys_locked + 1;
            END IF;
            PERFORM set_config(
                'outbox.order_locks', keys_locked || ':' || key_lock || ':' || bucket, true
            );
        END IF;
    END IF;
    NEW.position := nextval('outbox_message_position_seq');
    RETURN NEW;
END
$$;

CREATE TRIGGER outbox_message_assign_position
BEFORE INSERT ON outbox_message
FOR EACH ROW EXECUTE FUNCTION outbox_message_assign_position();

-- One notification per INSERT statement (not per row); PostgreSQL delivers it at commit and
-- never for a rolled-back transaction. The relay worker LISTENs on this channel.
CREATE FUNCTION outbox_message_notify_ready() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_message_ready', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_message_notify_ready
AFTER INSERT ON outbox_message
FOR EACH STATEMENT EXECUTE FUNCTION outbox_message_notify_ready();
"""

DROP_TRIGGERS = """
DROP TRIGGER outbox_message_notify_ready ON outbox_message;
DROP FUNCTION outbox_message_notify_ready();
DROP TRIGGER outbox_message_assign_position ON outbox_message;
DROP FUNCTION outbox_message_assign_position();
DROP FUNCTION outbox_order_lock_bucket(text);
DROP SEQUENCE outbox_message_position_seq;
ALTER TABLE outbox_message RESET (fillfactor);
"""


def create_triggers(apps, schema_editor):
    # PostgreSQL only: elsewhere (SQLite in development) rows keep position 0 and the relay,
    # which needs PostgreSQL, refuses to run.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_TRIGGERS)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_TRIGGERS)


# Both tables churn: every outbox row is updated twice (lease, published) and later purged, every
# inbox row purged. PostgreSQL's default waits for 20% of a table to be dead before autovacuum
# runs, which on a week of retained rows is millions of dead rows the claim steps over. These
# only take effect where autovacuum is on; the purge VACUUMs either way (OUTBOX["PURGE_VACUUM"]).
SET_VACUUM_PARAMETERS = """
ALTER TABLE outbox_message SET (autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE outbox_inbox SET (autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02);
"""
RESET_VACUUM_PARAMETERS = """
ALTER TABLE outbox_message RESET (autovacuum_vacuum_scale_factor,
    autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor);
ALTER TABLE outbox_inbox RESET (autovacuum_vacuum_scale_factor,
    autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor);
"""


def set_vacuum_parameters(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(SET_VACUUM_PARAMETERS)


def reset_vacuum_parameters(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(RESET_VACUUM_PARAMETERS)


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="InboxMessage",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("consumer", models.CharField(max_length=255)),
                ("message_id", models.CharField(max_length=255)),
                ("event_type", models.CharField(blank=True, default="", max_length=255)),
                ("processed_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "verbose_name": "inbox message",
                "db_table": "outbox_inbox",
                "indexes": [
                    models.Index(fields=["processed_at"], name="outbox_inbox_processed_idx")
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("consumer", "message_id"), name="outbox_inbox_consumer_message_uniq"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="OutboxMessage",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("message_id", models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                ("event_type", models.CharField(max_length=255)),
                ("routing_key", models.CharField(max_length=255)),
                ("exchange", models.CharField(blank=True, max_length=255)),
                ("aggregate_type", models.CharField(blank=True, default="", max_length=255)),
                ("aggregate_id", models.CharField(blank=True, default="", max_length=255)),
                ("ordering_key", models.CharField(blank=True, default="", max_length=511)),
                ("payload", models.JSONField(encoder=outbox.common.jsontext.OutboxJSONEncoder)),
                (
                    "headers",
                    models.JSONField(
                        blank=True, default=dict, encoder=outbox.common.jsontext.OutboxJSONEncoder
                    ),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("ready", "ready"),
                            ("published", "published"),
                            ("failed", "failed"),
                        ],
                        default="ready",
                        max_length=16,
                    ),
                ),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("next_attempt_at", models.DateTimeField(db_default=Now())),
                ("last_error", models.TextField(blank=True, default="")),
                ("created_at", models.DateTimeField(db_default=Now())),
                ("published_at", models.DateTimeField(blank=True, null=True)),
                ("position", models.BigIntegerField(db_default=0, editable=False)),
                (
                    "lease_owner",
                    models.CharField(blank=True, default="", editable=False, max_length=255),
                ),
                ("lease_expires_at", models.DateTimeField(blank=True, editable=False, null=True)),
            ],
            options={
                "verbose_name": "outbox message",
                "db_table": "outbox_message",
                "permissions": [
                    ("retry_outboxmessage", "Can retry outbox messages now"),
                    ("mark_failed_outboxmessage", "Can mark outbox messages failed"),
                    ("replay_outboxmessage", "Can replay outbox messages"),
                ],
                "indexes": [
                    models.Index(
                        condition=models.Q(("status", "published"), _negated=True),
                        fields=["ordering_key", "position"],
                        name="outbox_unpublished_key_idx",
                    ),
                    models.Index(
                        condition=models.Q(("ordering_key", ""), ("status", "ready")),
                        fields=["position"],
                        name="outbox_ready_unkeyed_idx",
                    ),
                    models.Index(
                        condition=models.Q(("status", "published")),
                        fields=["published_at"],
                        name="outbox_published_at_idx",
                    ),
                ],
            },
        ),
        migrations.RunPython(create_triggers, drop_triggers),
        migrations.RunPython(set_vacuum_parameters, reset_vacuum_parameters),
        # --- @idempotent stored results (issue 14, item 5) ---
        migrations.AddField(
            model_name="inboxmessage",
            name="result",
            field=models.TextField(blank=True, db_default="", editable=False),
        ),
        # --- end of @idempotent stored results ---
        # --- local jobs (durable after-commit work; issue 14) ---
        migrations.CreateModel(
            name="OutboxJob",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("kind", models.CharField(max_length=64)),
                ("name", models.CharField(max_length=190)),
                ("key", models.CharField(max_length=255)),
                ("payload", models.JSONField(encoder=outbox.common.jsontext.OutboxJSONEncoder)),
                (
                    "status",
                    models.CharField(
                        choices=[("ready", "ready"), ("failed", "failed")],
                        default="ready",
                        max_length=16,
                    ),
                ),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("next_attempt_at", models.DateTimeField(db_default=Now())),
                ("last_error", models.TextField(blank=True, default="")),
                ("created_at", models.DateTimeField(db_default=Now())),
                (
                    "lease_owner",
                    models.CharField(blank=True, default="", editable=False, max_length=255),
                ),
                ("lease_expires_at", models.DateTimeField(blank=True, editable=False, null=True)),
            ],
            options={
                "verbose_name": "outbox job",
                "db_table": "outbox_job",
                "permissions": [("retry_outboxjob", "Can retry outbox jobs now")],
                "indexes": [
                    models.Index(
                        condition=models.Q(("status", "ready")),
                        fields=["next_attempt_at"],
                        name="outbox_job_due_idx",
                    ),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("kind", "name", "key"), name="outbox_job_unique"
                    )
                ],
            },
        ),
        # --- Dead letters (issue 15): what consumers dead-lettered, for the admin and
        # outbox_dead_letters. ---
        migrations.CreateModel(
            name="DeadLetter",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("consumer", models.CharField(max_length=255)),
                ("queue", models.CharField(max_length=255)),
                ("message_id", models.CharField(blank=True, default="", max_length=255)),
                ("event_type", models.CharField(blank=True, default="", max_length=255)),
                ("routing_key", models.CharField(blank=True, default="", max_length=255)),
                ("aggregate_type", models.CharField(blank=True, default="", max_length=255)),
                ("aggregate_id", models.CharField(blank=True, default="", max_length=255)),
                (
                    "payload",
                    models.JSONField(
                        blank=True, encoder=outbox.common.jsontext.OutboxJSONEncoder, null=True
                    ),
                ),
                ("body", models.BinaryField(default=b"")),
                (
                    "headers",
                    models.JSONField(
                        blank=True, default=dict, encoder=outbox.common.jsontext.OutboxJSONEncoder
                    ),
                ),
                (
                    "properties",
                    models.JSONField(
                        blank=True, default=dict, encoder=outbox.common.jsontext.OutboxJSONEncoder
                    ),
                ),
                ("reason", models.TextField(blank=True, default="")),
                ("error_type", models.CharField(blank=True, default="", max_length=255)),
                ("error", models.TextField(blank=True, default="")),
                ("traceback", models.TextField(blank=True, default="")),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("dead_lettered_at", models.DateTimeField(db_default=Now())),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("dead", "dead"),
                            ("requeued", "requeued"),
                            ("discarded", "discarded"),
                        ],
                        default="dead",
                        max_length=16,
                    ),
                ),
                ("resolved_at", models.DateTimeField(blank=True, null=True)),
                ("resolved_by", models.CharField(blank=True, default="", max_length=255)),
            ],
            options={
                "verbose_name": "dead letter",
                "db_table": "outbox_dead_letter",
                "permissions": [
                    ("requeue_deadletter", "Can requeue dead letters"),
                    ("discard_deadletter", "Can discard dead letters"),
                ],
                "indexes": [
                    models.Index(fields=["message_id"], name="outbox_dead_message_idx"),
                    models.Index(fields=["aggregate_id"], name="outbox_dead_aggregate_idx"),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("status", "dead")),
                        fields=("consumer", "message_id"),
                        name="outbox_dead_letter_open_uniq",
                    )
                ],
            },
        ),
        # --- end of dead letters ---
    ]
