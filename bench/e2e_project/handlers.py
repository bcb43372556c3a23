"""The benchmark's consumer: ships each order placed, as the example's shipping service does,
and once the handler's transaction has committed writes ``<order id> <time>`` to the file
named by ``E2E_RECEIPTS`` (one line per message; the benchmark reads it afterwards)."""

from __future__ import annotations

import os
import time
from functools import partial
from typing import TextIO

from django.db import transaction

from example_project.shipping.models import Shipment
from outbox import IncomingMessage, integration_handler

CONSUMER = os.environ.get("E2E_CONSUMER", "bench-e2e")
_receipts: TextIO | None = None


@integration_handler("orders.order_placed", consumer=CONSUMER)
def ship(message: IncomingMessage) -> None:
    order = message.payload
    Shipment.objects.create(
        order_id=order["order_id"], sku=order["sku"], quantity=order["quantity"]
    )
    # After the commit, not now: the latency ends when the handler's work is durable.
    transaction.on_commit(partial(_receipt, str(order["order_id"]), time.time()))


def _receipt(order_id: str, started: float) -> None:
    global _receipts
    if _receipts is None:
        _receipts = open(os.environ["E2E_RECEIPTS"], "a", buffering=1)  # noqa: SIM115
    _receipts.write(f"{order_id} {started:.6f} {time.time():.6f}\n")
