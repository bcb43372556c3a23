"""The outbox and inbox tables, with the relay's triggers (positions in commit order per
ordering key, and a wake-up notification at commit). docs/relay.md ("Per-aggregate order")
has the reasoning. Squashed before the first release: one initial migration."""

import uuid

import django.utils.timezone
from django.db import migrations, models

import outbox.common.jsontext

# Rows of one ordering key get their position only after the key's transaction-level advisory
# lock is taken, and that lock is held until commit: a second transaction writing the same key
# waits for the first to commit (or roll back) before it draws its position. Position order is
# therefore commit order per key, which the sequence-assigned id is not. The two-integer lock
# form keeps these locks out of the single-bigint key space applications use; 1330992216 is
# b"OUTX". A hash collision between two keys only makes their writers wait for each other.
CREATE_TRIGGERS = """
-- Room on each page for the claim's lease update: it changes no indexed column, so with free
-- space on the page it is a HOT update that writes no index entries.
ALTER TABLE outbox_message SET (fillfactor = 70);

CREATE SEQUENCE outbox_message_position_seq AS bigint;

CREATE FUNCTION outbox_message_assign_position() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ordering_key <> '' THEN
        PERFORM pg_advisory_xact_lock(1330992216, hashtext(NEW.ordering_key));
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
                ("next_attempt_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("last_error", models.TextField(blank=True, default="")),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
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
                        condition=models.Q(("status", "ready")),
                        fields=["position"],
                        name="outbox_ready_position_idx",
                    ),
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
    ]
