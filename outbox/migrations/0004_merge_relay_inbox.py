"""Joins the relay's and the inbox's migrations, which were written in parallel."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("outbox", "0002_relay"), ("outbox", "0003_inbox")]

    operations = []
