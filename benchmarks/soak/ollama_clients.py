"""Ollama's dialect through the official `ollama` client: generate, chat, embed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .outcomes import Disconnected, Incomplete, Outcome, timed
from .session import Session


async def _drain(parts: AsyncIterator[Any], drop_after: int | None) -> None:
    """Read a stream to its `done: true` chunk (an error line raises in the client)."""
    seen, done = 0, False
    try:
        async for part in parts:
            seen += 1
            done = done or bool(part.done)
            if drop_after is not None and seen >= drop_after and not done:
                raise Disconnected
    finally:
        await parts.aclose()  # type: ignore[attr-defined]
    if not done:
        raise Incomplete(f"{seen} chunk(s), none with done: true")


async def generate(s: Session, model: str) -> Outcome:
    stream, options = s.stream(), {"num_predict": s.tokens()}
    drop = s.disconnect_after() if stream else None

    async def request() -> None:
        if stream:
            parts = await s.ollama.generate(model, s.prompt(), stream=True, options=options)
            await _drain(parts, drop)
        elif not (await s.ollama.generate(model, s.prompt(), options=options)).done:
            raise Incomplete("done is false")

    kind = "ollama.generate." + ("stream" if stream else "whole")
    return await timed(kind, model, request, s.plan.request_timeout)


async def chat(s: Session, model: str) -> Outcome:
    stream, options = s.stream(), {"num_predict": s.tokens()}
    drop = s.disconnect_after() if stream else None
    messages = [{"role": "user", "content": s.prompt()}]
    if s.rng.random() < 0.3:  # a longer conversation now and then
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": s.prompt()},
            {"role": "assistant", "content": s.prompt()},
            *messages,
        ]

    async def request() -> None:
        if stream:
            parts = await s.ollama.chat(model, messages, stream=True, options=options)
            await _drain(parts, drop)
        elif not (await s.ollama.chat(model, messages, options=options)).done:
            raise Incomplete("done is false")

    kind = "ollama.chat." + ("stream" if stream else "whole")
    return await timed(kind, model, request, s.plan.request_timeout)


async def embed(s: Session, model: str) -> Outcome:
    inputs = [s.prompt() for _ in range(s.rng.randint(1, 4))]

    async def request() -> None:
        result = await s.ollama.embed(model, inputs)
        if len(result.embeddings) != len(inputs):
            raise Incomplete(f"{len(result.embeddings)} vectors for {len(inputs)} inputs")

    return await timed("ollama.embed", model, request, s.plan.request_timeout)
