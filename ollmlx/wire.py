"""Ollama's streamed response chunks, as msgspec Structs: the lines a client reads.

A leaf module: the worker writes token lines in these shapes itself (`token_chunk`), so
the supervisor can pass them through; the supervisor writes the final chunk.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .protocol import StreamAs, TokenEvent, TokenLogprob


class GenerateChunk(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    response: str
    done: bool
    thinking: str | None = None
    done_reason: str | None = None
    context: list[int] | None = None
    logprobs: list[TokenLogprob] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class OutMessage(msgspec.Struct, omit_defaults=True):
    """An assistant message in a response: `role` and `content` are always present."""

    role: str
    content: str
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunk(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    message: OutMessage
    done: bool
    done_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


_second: list[Any] = [None, ""]  # the last second formatted: strftime once a second


def now_rfc3339() -> str:
    """UTC with nanoseconds, trailing zeros trimmed, as Go's RFC3339Nano writes it."""
    seconds, frac = divmod(time.time_ns(), 1_000_000_000)
    if _second[0] != seconds:
        _second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    stamp = _second[1]
    digits = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def generate_chunk(model: str, event: TokenEvent | None) -> GenerateChunk:
    """/api/generate's chunk for one token event (None: an empty one, for the final chunk)."""
    return GenerateChunk(
        model=model,
        created_at=now_rfc3339(),
        response=event.text if event else "",
        done=False,
        thinking=(event.thinking or None) if event else None,
        logprobs=event.logprobs if event else None,
    )


def chat_chunk(model: str, event: TokenEvent | None) -> ChatChunk:
    """/api/chat's chunk for one token event (None: an empty one, for the final chunk)."""
    message = OutMessage(
        role="assistant",
        content=event.text if event else "",
        thinking=(event.thinking or None) if event else None,
        tool_calls=event.tool_calls if event else None,
    )
    return ChatChunk(
        model=model,
        created_at=now_rfc3339(),
        message=message,
        done=False,
        logprobs=event.logprobs if event else None,
    )


def token_chunk(stream_as: StreamAs, event: TokenEvent) -> GenerateChunk | ChatChunk:
    """The finished line a worker writes for a token when asked to (`stream_as`)."""
    return (chat_chunk if stream_as.chat else generate_chunk)(stream_as.model, event)
