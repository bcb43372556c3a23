"""The relay test settings on SQLite: the outbox in the file named by OUTBOX_SQLITE_PATH.

Used by tests/relay/test_sqlite_relay.py, whose subprocesses check what docs/concepts.md
promises for databases other than PostgreSQL.
"""

import os

from tests.relay.settings import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["OUTBOX_SQLITE_PATH"],
    }
}
