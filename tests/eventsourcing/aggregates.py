"""A small event-sourced aggregate for the event-store tests, with events of every JSON-awkward
field type the serializer converts back."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from domain_events import DomainEvent, EventSourcedAggregate, applies


@dataclass(frozen=True)
class TallyStarted(DomainEvent, event_type="tests.TallyStarted"):
    label: str
    owner_id: UUID
    due: dt.date | None = None


@dataclass(frozen=True)
class TallyAdded(DomainEvent, event_type="tests.TallyAdded"):
    amount: Decimal
    tags: list[str]


class Tally(EventSourcedAggregate, aggregate_type="tests.tally"):
    snapshot_every = 10

    def __init__(self, aggregate_id: str | int | UUID) -> None:
        super().__init__(aggregate_id)
        self.label = ""
        self.total = Decimal(0)
        self.additions = 0

    @classmethod
    def start(cls, aggregate_id: str, label: str, owner_id: UUID) -> Tally:
        tally = cls(aggregate_id)
        tally.record(TallyStarted(label=label, owner_id=owner_id, due=dt.date(2030, 1, 2)))
        return tally

    def add(self, amount: Decimal, *tags: str) -> None:
        self.record(TallyAdded(amount=amount, tags=list(tags)))

    @applies(TallyStarted)
    def _started(self, event: TallyStarted) -> None:
        self.label = event.label

    @applies(TallyAdded)
    def _added(self, event: TallyAdded) -> None:
        self.total += event.amount
        self.additions += 1

    def snapshot_state(self) -> dict[str, Any]:
        return {"label": self.label, "total": str(self.total), "additions": self.additions}

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        self.label = state["label"]
        self.total = Decimal(state["total"])
        self.additions = state["additions"]
