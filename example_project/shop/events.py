"""The shop's domain events: facts inside this service, never sent as they are."""

from dataclasses import dataclass
from uuid import UUID

from domain_events import DomainEvent


@dataclass(frozen=True)
class OrderPlaced(DomainEvent):
    order_id: UUID
    sku: str
    quantity: int


@dataclass(frozen=True)
class StockReserved(DomainEvent):
    sku: str
    quantity: int
    order_id: UUID
    available_after: int
