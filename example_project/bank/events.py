"""The bank's domain events: the stored history of each account."""

from dataclasses import dataclass
from decimal import Decimal

from domain_events import DomainEvent


@dataclass(frozen=True)
class AccountOpened(DomainEvent, event_type="bank.AccountOpened"):
    account_id: str
    owner: str


@dataclass(frozen=True)
class MoneyDeposited(DomainEvent, event_type="bank.MoneyDeposited"):
    account_id: str
    amount: Decimal
    # The balance after the event lets a read model be rebuilt idempotently: replaying an
    # event sets the balance instead of adding to it.
    balance_after: Decimal


@dataclass(frozen=True)
class MoneyWithdrawn(DomainEvent, event_type="bank.MoneyWithdrawn"):
    account_id: str
    amount: Decimal
    balance_after: Decimal
