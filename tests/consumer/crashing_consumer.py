"""A consumer that dies (``os._exit``) after its first batch committed, before any ack.

Run as ``python -m tests.consumer.crashing_consumer`` from the repository root with the
environment of ``ConsumerBroker.start_consumer`` (``OUTBOX_DB_NAME``, ``OUTBOX_EXCHANGE``).
It prints the size of the batch it committed, then exits with status 3 without
acknowledging anything, as a process killed between the commit and the ack would.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import django

EXIT_STATUS = 3


def main() -> None:
    """Consume the recorder's queue until the first batch commits, then die."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.consumer.settings")
    django.setup()
    from pika.adapters.blocking_connection import BlockingChannel

    from outbox.consumer.loop import ConsumerLoop
    from outbox.consumer.processing import Delivery, Outcome
    from outbox.consumer.registry import load_handlers, registry
    from tests.consumer.handlers import RECORDER

    class DiesBeforeTheAck(ConsumerLoop):
        def settle(
            self, channel: BlockingChannel, settled: Sequence[tuple[Delivery, Outcome]]
        ) -> None:
            # settle() runs once the batch's transaction committed; it sends the acks.
            print(f"committed {len(settled)}", flush=True)
            os._exit(EXIT_STATUS)

    load_handlers()
    DiesBeforeTheAck(registry.get(RECORDER)).run()


if __name__ == "__main__":
    main()
