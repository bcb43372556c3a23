"""The example shop end to end through its JSON view, with real commits."""

import json
from typing import Any

import pytest
from django.test import Client

from example_project.shop.models import Order, Stock
from outbox.models import OutboxMessage

pytestmark = pytest.mark.django_db(transaction=True)


def place(client: Client, sku: str, quantity: Any) -> Any:
    return client.post(
        "/orders/", json.dumps({"sku": sku, "quantity": quantity}), content_type="application/json"
    )


def test_placing_an_order_commits_order_stock_and_outbox_row(client: Client) -> None:
    Stock.objects.create(sku="mug", available=5)
    response = place(client, "mug", 2)
    assert response.status_code == 201
    order = Order.objects.get()
    assert response.json()["order_id"] == str(order.id)
    assert Stock.objects.get(sku="mug").available == 3
    message = OutboxMessage.objects.get()
    assert message.event_type == "orders.order_placed"
    assert message.ordering_key == f"order:{order.id}"
    assert message.payload["order_id"] == str(order.id)
    assert message.payload["quantity"] == 2
    assert message.headers == {"x-source": "shop"}


def test_short_stock_rolls_back_order_stock_and_outbox_row(client: Client) -> None:
    Stock.objects.create(sku="mug", available=1)
    response = place(client, "mug", 2)
    assert response.status_code == 409
    assert "only 1" in response.json()["error"]
    assert not Order.objects.exists()
    assert Stock.objects.get(sku="mug").available == 1
    assert not OutboxMessage.objects.exists()


@pytest.mark.parametrize(
    ("body", "status"),
    [("not json", 400), ('{"sku": "mug"}', 400), ('{"sku": "mug", "quantity": 0}', 400)],
)
def test_bad_requests_write_nothing(client: Client, body: str, status: int) -> None:
    Stock.objects.create(sku="mug", available=1)
    response = client.post("/orders/", body, content_type="application/json")
    assert response.status_code == status
    assert not Order.objects.exists()
    assert not OutboxMessage.objects.exists()


def test_unknown_sku_is_404(client: Client) -> None:
    assert place(client, "nothing", 1).status_code == 404
    assert not OutboxMessage.objects.exists()


def test_order_detail(client: Client) -> None:
    Stock.objects.create(sku="mug", available=1)
    order_id = place(client, "mug", 1).json()["order_id"]
    assert client.get(f"/orders/{order_id}/").json()["status"] == "placed"
