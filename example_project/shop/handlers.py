"""Handlers of the shop's domain events, found by domain_events at start-up.

``reserve_stock`` and ``announce_order_placed`` run inside the transaction that saves the
order: if stock is short, the order, the reservation and the outbox row all roll back.
"""

import logging

from domain_events import handler
from example_project.shop.events import OrderPlaced
from example_project.shop.models import Stock
from outbox import publish

logger = logging.getLogger("example_project.shop")


@handler(OrderPlaced)
def reserve_stock(event: OrderPlaced) -> None:
    # Locked so that two orders for the last item cannot both reserve it.
    stock = Stock.objects.select_for_update().get(sku=event.sku)
    stock.reserve(event.quantity, order_id=event.order_id)
    stock.save(update_fields=["available"])


@handler(OrderPlaced)
def announce_order_placed(event: OrderPlaced) -> None:
    # The integration event is a contract with other services, so its payload is written out
    # field by field instead of dumping the domain event.
    publish(
        "orders.order_placed",
        {
            "order_id": event.order_id,
            "sku": event.sku,
            "quantity": event.quantity,
            "placed_at": event.occurred_at,
        },
        aggregate_type="order",
        aggregate_id=event.order_id,
        headers={"x-source": "shop"},
    )


@handler(OrderPlaced, on_commit=True)
def log_order_placed(event: OrderPlaced) -> None:
    logger.info("order %s placed: %s x %s", event.order_id, event.quantity, event.sku)
