"""Relay support: commit-ordered positions per ordering key, claim leases, and a wake-up
notification when rows commit. The reasoning is in docs/relay.md ("Per-aggregate order")."""

from django.db import migrations, models

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
UPDATE outbox_message SET position = id;
SELECT setval('outbox_message_position_seq', GREATEST((SELECT max(id) FROM outbox_message), 1));

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
    dependencies = [("outbox", "0001_initial")]

    operations = [
        migrations.RemoveIndex(model_name="outboxmessage", name="outbox_ready_due_idx"),
        migrations.RemoveIndex(model_name="outboxmessage", name="outbox_unpublished_key_idx"),
        migrations.AddField(
            model_name="outboxmessage",
            name="lease_expires_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="lease_owner",
            field=models.CharField(blank=True, default="", editable=False, max_length=255),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="position",
            field=models.BigIntegerField(db_default=0, editable=False),
        ),
        migrations.RunPython(create_triggers, drop_triggers),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("status", "ready")),
                fields=["position"],
                name="outbox_ready_position_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("status", "published"), _negated=True),
                fields=["ordering_key", "position"],
                name="outbox_unpublished_key_idx",
            ),
        ),
    ]
