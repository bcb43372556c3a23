"""The one duration syntax of the commands: ``7d``, ``12h``, ``30m``, ``45s``."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from outbox.common.durations import duration_argument, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("250ms", timedelta(milliseconds=250)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("86400", timedelta(days=1)),  # a bare number is seconds, the settings' unit
        ("0.5", timedelta(milliseconds=500)),
        (" 2D ", timedelta(days=2)),
    ],
)
def test_parses_every_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "7 days", "-5s", "30m1h", "5x", "1h1h", "7d junk"])
def test_refuses_anything_else_naming_the_syntax(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a duration: .* such as 7d, 12h, 30m, 45s"):
        parse_duration(text)


def test_argparse_type_reports_the_syntax() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="7d, 12h"):
        duration_argument("a week")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (timedelta(days=7), "7d"),
        (timedelta(hours=12), "12h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (45, "45s"),
        (0.5, "0.5s"),
        (0, "0s"),
        (90061, "1d1h1m1s"),
        (98.3, "1m38s"),
    ],
)
def test_formats_the_way_it_parses(value: timedelta | float, written: str) -> None:
    assert format_duration(value) == written
    assert abs(parse_duration(written).total_seconds() - round_if_long(value)) < 1e-9


def round_if_long(value: timedelta | float) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return seconds if seconds < 60 else float(round(seconds))
