"""Durations as Ollama reads them (Go's time.ParseDuration and api.Duration), clamped."""

from __future__ import annotations

import math

import pytest

from ollmlx.config import MAX_DURATION, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (1.5, 1.5),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("2us", 2e-6),
        ("-1", -1.0),
        ("-5m", -300.0),
        ("45", 45.0),
    ],
)
def test_numbers_and_go_durations(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5x", "m5", "1h 30m", "abc", True, "nan"])
def test_invalid_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


def test_numbers_beyond_gos_longest_duration_are_forever() -> None:
    # api.Duration: a number becomes time.Duration(t * 1e9); past MaxInt64 it means forever.
    assert parse_duration(1e300) == math.inf
    assert parse_duration(MAX_DURATION) == MAX_DURATION


def test_a_duration_string_longer_than_go_can_hold_is_an_error() -> None:
    # Go's time.ParseDuration("99999999999h") fails with "invalid duration".
    with pytest.raises(ValueError):
        parse_duration("99999999999h")
