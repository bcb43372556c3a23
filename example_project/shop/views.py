"""JSON endpoints of the shop."""

import json
from uuid import UUID

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from example_project.shop.models import Order, OutOfStockError, Stock


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """POST {"sku": "...", "quantity": n}: 201 with the order, 409 when stock is short."""
    try:
        body = json.loads(request.body)
        sku = body["sku"]
        quantity = body["quantity"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'expected JSON {"sku": str, "quantity": int}'}, status=400)
    if not isinstance(sku, str) or not isinstance(quantity, int) or isinstance(quantity, bool):
        return JsonResponse({"error": "sku must be a string, quantity an integer"}, status=400)
    if quantity < 1:
        return JsonResponse({"error": "quantity must be at least 1"}, status=400)
    if not Stock.objects.filter(sku=sku).exists():
        return JsonResponse({"error": f"unknown sku {sku!r}"}, status=404)
    order = Order.place(sku, quantity)
    try:
        order.save()
    except OutOfStockError as error:
        return JsonResponse({"error": str(error)}, status=409)
    return JsonResponse(_order_json(order), status=201)


@require_GET
def order_detail(request: HttpRequest, order_id: UUID) -> JsonResponse:
    return JsonResponse(_order_json(get_object_or_404(Order, pk=order_id)))


def _order_json(order: Order) -> dict[str, object]:
    return {
        "order_id": str(order.id),
        "sku": order.sku,
        "quantity": order.quantity,
        "status": order.status,
    }
