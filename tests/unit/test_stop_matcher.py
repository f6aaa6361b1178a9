"""Stop strings across token boundaries: nothing of a stop string ever reaches the client."""

from __future__ import annotations

import pytest
from ollmlx_worker.sampling import StopMatcher


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(piece) for piece in pieces)
    return out + matcher.flush(), matcher.stopped


@pytest.mark.parametrize(
    ("pieces", "expected", "stopped"),
    [
        (["hello ", "wor", "ld"], "hello world", False),
        (["hello <", "|end", "|> more"], "hello ", True),
        (["<|end|>"], "", True),
        (["a<", "b"], "a<b", False),  # a held-back prefix that turns out not to be a stop
        (["x", "<|e", "nd|"], "x<|end|", False),  # an unfinished stop is text at the end
    ],
)
def test_stops_split_across_tokens(pieces: list[str], expected: str, stopped: bool) -> None:
    assert feed_all(["<|end|>"], pieces) == (expected, stopped)


def test_the_earliest_of_several_stops_wins() -> None:
    assert feed_all(["STOP", "OP"], ["a", "ST", "OP b"]) == ("a", True)


def test_text_that_cannot_start_a_stop_is_not_held_back() -> None:
    matcher = StopMatcher(["<|end|>"])
    assert matcher.feed("plain text") == "plain text"
    assert matcher.feed("tail <|") == "tail "  # only the possible start is held


def test_nothing_after_a_stop() -> None:
    matcher = StopMatcher(["."])
    assert matcher.feed("one. two") == "one"
    assert matcher.feed(" three") == ""
    assert matcher.flush() == ""


def test_no_stops_passes_everything_through() -> None:
    assert feed_all([], ["a", "b"]) == ("ab", False)
    assert feed_all([""], ["a"]) == ("a", False)  # an empty stop string never matches
