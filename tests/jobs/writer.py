"""A process for tests/jobs/test_durable_handlers.py: saves a counter with a durable handler
registered, prints "committed" once the transaction has committed, and is killed (SIGKILL) by
itself right after, before anything could run the handler.

Run with the test settings and OUTBOX_DB_NAME naming the test database.
"""

from __future__ import annotations

import os
import signal
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.db import transaction  # noqa: E402  # after django.setup()

from tests.jobs.handlers import register  # noqa: E402
from tests.testapp.models import Counter  # noqa: E402


def main(name: str) -> None:
    register()
    with transaction.atomic():
        counter = Counter(name=name)
        counter.bump(by=3)
        counter.save()
    print("committed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1])
