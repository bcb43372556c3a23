"""The shop's aggregates: orders, and the stock they reserve."""

from __future__ import annotations

import uuid

from django.db import models

from domain_events import AggregateRoot
from example_project.shop.events import OrderPlaced, StockReserved


class OutOfStockError(Exception):
    """Not enough stock for an order; raised by a handler, it rolls the order back."""


class Order(AggregateRoot):
    # A UUID made in Python gives the order its identity before the INSERT, so the
    # OrderPlaced event can carry it and the row is written once.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sku = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=16, default="placed")
    created_at = models.DateTimeField(auto_now_add=True)

    @classmethod
    def place(cls, sku: str, quantity: int) -> Order:
        """A new, unsaved order with ``OrderPlaced`` recorded; ``save()`` dispatches it."""
        if quantity < 1:
            raise ValueError("quantity must be at least 1")
        order = cls(sku=sku, quantity=quantity)
        order.record_event(OrderPlaced(order_id=order.id, sku=sku, quantity=quantity))
        return order

    def __str__(self) -> str:
        return f"order {self.id}: {self.quantity} x {self.sku}"


class Stock(AggregateRoot):
    sku = models.CharField(max_length=64, unique=True)
    available = models.IntegerField(default=0)

    def reserve(self, quantity: int, *, order_id: uuid.UUID) -> None:
        if quantity > self.available:
            raise OutOfStockError(f"only {self.available} of {self.sku} left, {quantity} requested")
        self.available -= quantity
        self.record_event(
            StockReserved(
                sku=self.sku,
                quantity=quantity,
                order_id=order_id,
                available_after=self.available,
            )
        )

    def __str__(self) -> str:
        return f"{self.sku}: {self.available} available"
