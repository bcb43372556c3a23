# Operations: one permission per admin action, and an index for purge and throughput.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0004_merge_relay_inbox"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="outboxmessage",
            options={
                "permissions": [
                    ("retry_outboxmessage", "Can retry outbox messages now"),
                    ("mark_failed_outboxmessage", "Can mark outbox messages failed"),
                    ("replay_outboxmessage", "Can replay outbox messages"),
                ],
                "verbose_name": "outbox message",
            },
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("status", "published")),
                fields=["published_at"],
                name="outbox_published_at_idx",
            ),
        ),
    ]
