"""``Account``: an event-sourced aggregate. Its state is the fold of its stored events."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from domain_events import EventSourcedAggregate, applies
from example_project.bank.events import AccountOpened, MoneyDeposited, MoneyWithdrawn


class OverdraftError(Exception):
    """A withdrawal larger than the balance; nothing is recorded."""


class Account(EventSourcedAggregate, aggregate_type="bank.account"):
    snapshot_every = 100
    # Every stored event is also an integration event: the outbox row commits with it.
    publish_stored_events = True

    def __init__(self, aggregate_id: str | int | UUID) -> None:
        super().__init__(aggregate_id)
        self.owner = ""
        self.balance = Decimal(0)
        self.is_open = False

    # Commands: check the rules, then record what happened.

    @classmethod
    def open(cls, owner: str, account_id: UUID | None = None) -> Account:
        """A new account with ``AccountOpened`` pending; saving it creates its stream."""
        if not owner.strip():
            raise ValueError("an account needs an owner")
        account = cls(account_id or uuid4())
        account.record(AccountOpened(account_id=account.id, owner=owner))
        return account

    def deposit(self, amount: Decimal) -> None:
        self._require_open_and_positive(amount)
        self.record(
            MoneyDeposited(account_id=self.id, amount=amount, balance_after=self.balance + amount)
        )

    def withdraw(self, amount: Decimal) -> None:
        self._require_open_and_positive(amount)
        if amount > self.balance:
            raise OverdraftError(
                f"account {self.id} holds {self.balance}; cannot withdraw {amount}"
            )
        self.record(
            MoneyWithdrawn(account_id=self.id, amount=amount, balance_after=self.balance - amount)
        )

    def _require_open_and_positive(self, amount: Decimal) -> None:
        if not self.is_open:
            raise ValueError(f"account {self.id} is not open")
        if not isinstance(amount, Decimal) or amount <= 0:
            raise ValueError(f"amount must be a positive Decimal, got {amount!r}")

    # Apply methods: only change state, since they also run when events are replayed.

    @applies(AccountOpened)
    def _opened(self, event: AccountOpened) -> None:
        self.owner = event.owner
        self.is_open = True

    @applies(MoneyDeposited)
    def _deposited(self, event: MoneyDeposited) -> None:
        self.balance += event.amount

    @applies(MoneyWithdrawn)
    def _withdrawn(self, event: MoneyWithdrawn) -> None:
        self.balance -= event.amount

    # Snapshots: every 100 events, so loading replays at most 99 events.

    def snapshot_state(self) -> dict[str, Any]:
        return {"owner": self.owner, "balance": str(self.balance), "is_open": self.is_open}

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        self.owner = state["owner"]
        self.balance = Decimal(state["balance"])
        self.is_open = state["is_open"]
