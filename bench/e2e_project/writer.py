"""One writer process of the end-to-end benchmark: ``--rate`` transactions per second for
``--seconds``, each placing an order (the example's ``Order``, whose ``OrderPlaced`` handler
reserves stock and calls ``publish()``), then ``<order id> <commit time>`` lines on stdout.

    python -m e2e_project.writer --rate 200 --seconds 30 --sku e2e-0
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import django

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--sku", required=True)
    options = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "e2e_project.settings"
    django.setup()
    logging.getLogger("example_project").setLevel(logging.WARNING)
    from django.db import transaction

    from example_project.shop.models import Order

    committed: list[tuple[str, float]] = []
    interval = 1 / options.rate
    next_at = time.perf_counter()
    end = next_at + options.seconds
    while next_at < end:
        with transaction.atomic():
            order = Order.place(options.sku, 1)
            order.save()
        committed.append((str(order.id), time.time()))
        next_at += interval
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    sys.stdout.write("".join(f"{order_id} {at:.6f}\n" for order_id, at in committed))


if __name__ == "__main__":
    main()
