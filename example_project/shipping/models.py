"""The shipping service's data: one shipment per order placed in the shop."""

from __future__ import annotations

from django.db import models


class Shipment(models.Model):
    # Unique as a second line of defence: the inbox already runs the handler once per
    # message, and this turns a bug that would ship an order twice into a visible error.
    order_id = models.UUIDField(unique=True)
    sku = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=16, default="pending")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"shipment of order {self.order_id}: {self.quantity} x {self.sku}"
