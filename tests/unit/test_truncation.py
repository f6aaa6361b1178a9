"""Dropping old turns to fit the context: Ollama's choice of turns, in a few renders."""

from __future__ import annotations

import math

from ollmlx_worker.prompts import fit_messages

from ollmlx.protocol import Message


def chat(turns: int) -> list[Message]:
    messages = [Message(role="system", content="sys")]
    for i in range(turns):
        messages.append(Message(role="user", content=f"u{i}"))
        messages.append(Message(role="assistant", content=f"a{i}"))
    return [*messages, Message(role="user", content="last")]


class Counting:
    """An encoder where every message costs 10 tokens; it counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, messages: list[Message]) -> list[int]:
        self.calls += 1
        return [0] * (10 * len(messages))


def test_a_chat_that_fits_is_rendered_once() -> None:
    encode = Counting()
    assert len(fit_messages(chat(3), encode, 1000)) == 80
    assert encode.calls == 1


def test_keeps_the_system_message_the_last_turn_and_the_most_recent_turns() -> None:
    kept: list[list[Message]] = []

    def encode(messages: list[Message]) -> list[int]:
        kept.append(messages)
        return [0] * (10 * len(messages))

    prompt = fit_messages(chat(10), encode, 55)  # room for 5 messages
    assert len(prompt) == 50
    best = next(m for m in kept if len(m) == 5)
    assert [m.content for m in best] == ["sys", "a8", "u9", "a9", "last"]


def test_the_number_of_renders_grows_with_the_log_of_the_chat() -> None:
    for turns in (10, 1000, 10_000):
        encode = Counting()
        prompt = fit_messages(chat(turns), encode, 205)  # room for 20 messages
        assert len(prompt) == 200
        assert encode.calls <= 2 * math.log2(20) + 4  # bounded by what is kept, not by turns


def test_when_even_the_last_turn_does_not_fit_it_is_kept_alone() -> None:
    encode = Counting()
    prompt = fit_messages(chat(50), encode, 15)
    assert len(prompt) == 20  # system + last: the caller then cuts tokens from the front
