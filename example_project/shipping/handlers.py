"""The shipping service's integration handlers, run by ``manage.py outbox_consume shipping``.

In a real system shipping is another service with its own database; here it shares the
example's, which changes nothing for the consumer: it only sees messages from RabbitMQ.
"""

import logging

from example_project.shipping.models import Shipment
from outbox import IncomingMessage, integration_handler

logger = logging.getLogger("example_project.shipping")

CONSUMER = "shipping"


@integration_handler("orders.order_placed", consumer=CONSUMER)
def create_shipment(message: IncomingMessage) -> None:
    # Runs in one transaction with the inbox record: at most once per message, even when
    # RabbitMQ or a restarted relay delivers it again.
    order = message.payload
    shipment = Shipment.objects.create(
        order_id=order["order_id"], sku=order["sku"], quantity=order["quantity"]
    )
    logger.info("shipment %s created for order %s", shipment.pk, shipment.order_id)
