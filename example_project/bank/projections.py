"""``BalanceProjection``: the balances read model, as a function of the account events.

The same code keeps the table current while accounts are saved (``handlers.py`` calls
``apply_to_balances`` in the saving transaction) and rebuilds it from the store
(``manage.py domain_events_project example_project.bank.projections.BalanceProjection
--rebuild``). Each event sets absolute values, so replaying is idempotent.
"""

from domain_events import DomainEvent, Projection, RecordedEvent
from example_project.bank.events import AccountOpened, MoneyDeposited, MoneyWithdrawn
from example_project.bank.models import AccountBalance


def apply_to_balances(event: DomainEvent) -> None:
    """Update the balances table for one account event; other events are ignored."""
    if isinstance(event, AccountOpened):
        AccountBalance.objects.update_or_create(
            account_id=event.account_id, defaults={"owner": event.owner, "balance": 0}
        )
    elif isinstance(event, MoneyDeposited | MoneyWithdrawn):
        AccountBalance.objects.filter(account_id=event.account_id).update(
            balance=event.balance_after
        )


class BalanceProjection(Projection):
    name = "bank.balances"

    def handle(self, recorded: RecordedEvent) -> None:
        apply_to_balances(recorded.event)

    def reset(self) -> None:
        AccountBalance.objects.all().delete()
