"""Aggregates for the tests: a counter that records events, and a log its handlers write to."""

from dataclasses import dataclass

from django.db import models

from domain_events import AggregateRoot, DomainEvent


@dataclass(frozen=True)
class CounterBumped(DomainEvent):
    counter_name: str
    by: int


@dataclass(frozen=True)
class CounterEchoed(DomainEvent):
    counter_name: str
    hops: int


class Counter(AggregateRoot):
    name = models.CharField(max_length=32, unique=True)
    value = models.IntegerField(default=0)

    def bump(self, by: int = 1) -> None:
        self.value += by
        self.record_event(CounterBumped(counter_name=self.name, by=by))


class LogLine(models.Model):
    """Written by handlers, so a test can see whether their writes committed."""

    text = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.text
