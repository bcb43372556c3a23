"""The bank's read model: one row per account with its balance, kept by ``BalanceProjection``."""

from django.db import models


class AccountBalance(models.Model):
    account_id = models.CharField(max_length=255, primary_key=True)
    owner = models.CharField(max_length=255)
    balance = models.DecimalField(max_digits=18, decimal_places=2)

    def __str__(self) -> str:
        return f"{self.account_id} ({self.owner}): {self.balance}"
