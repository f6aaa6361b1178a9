"""OpenAI's dialect through the official `openai` client: chat completions, completions,
responses and embeddings. A stream's final line is its finish_reason chunk (the client
consumes `[DONE]`) or `response.completed`/`response.incomplete`."""

from __future__ import annotations

from typing import Any

from .outcomes import Disconnected, Incomplete, Outcome, StreamError, timed
from .session import Session

FINAL_RESPONSE_EVENTS = ("response.completed", "response.incomplete")


async def _drain(stream: Any, drop_after: int | None, is_final: Any) -> None:
    seen, final = 0, False
    try:
        async for item in stream:
            seen += 1
            if getattr(item, "type", "") == "error":  # a Responses error event
                raise StreamError(item.message)
            final = final or is_final(item)
            if drop_after is not None and seen >= drop_after and not final:
                raise Disconnected
    finally:
        await stream.close()
    if not final:
        raise Incomplete(f"{seen} event(s), none final")


def _finished(chunk: Any) -> bool:
    return any(choice.finish_reason is not None for choice in chunk.choices)


async def chat(s: Session, model: str) -> Outcome:
    stream, tokens = s.stream(), s.tokens()
    drop = s.disconnect_after() if stream else None
    messages: Any = [{"role": "user", "content": s.prompt()}]

    async def request() -> None:
        create = s.openai.chat.completions.create
        if stream:
            chunks = await create(model=model, messages=messages, max_tokens=tokens, stream=True)
            await _drain(chunks, drop, _finished)
        elif (await create(model=model, messages=messages, max_tokens=tokens)).choices[
            0
        ].finish_reason is None:
            raise Incomplete("no finish_reason")

    kind = "openai.chat." + ("stream" if stream else "whole")
    return await timed(kind, model, request, s.plan.request_timeout)


async def completion(s: Session, model: str) -> Outcome:
    stream, tokens = s.stream(), s.tokens()
    drop = s.disconnect_after() if stream else None

    async def request() -> None:
        create = s.openai.completions.create
        if stream:
            chunks = await create(model=model, prompt=s.prompt(), max_tokens=tokens, stream=True)
            await _drain(chunks, drop, _finished)
        elif (await create(model=model, prompt=s.prompt(), max_tokens=tokens)).choices[
            0
        ].finish_reason is None:
            raise Incomplete("no finish_reason")

    kind = "openai.completion." + ("stream" if stream else "whole")
    return await timed(kind, model, request, s.plan.request_timeout)


async def responses(s: Session, model: str) -> Outcome:
    stream, tokens = s.stream(), max(s.tokens(), 1)
    drop = s.disconnect_after() if stream else None

    async def request() -> None:
        create = s.openai.responses.create
        if stream:
            events = await create(
                model=model, input=s.prompt(), max_output_tokens=tokens, stream=True
            )
            await _drain(events, drop, lambda e: e.type in FINAL_RESPONSE_EVENTS)
        else:
            response = await create(model=model, input=s.prompt(), max_output_tokens=tokens)
            if response.status not in ("completed", "incomplete"):
                raise Incomplete(f"status {response.status}")

    kind = "openai.responses." + ("stream" if stream else "whole")
    return await timed(kind, model, request, s.plan.request_timeout)


async def embeddings(s: Session, model: str) -> Outcome:
    inputs = [s.prompt() for _ in range(s.rng.randint(1, 4))]

    async def request() -> None:
        result = await s.openai.embeddings.create(model=model, input=inputs)
        if len(result.data) != len(inputs):
            raise Incomplete(f"{len(result.data)} vectors for {len(inputs)} inputs")

    return await timed("openai.embeddings", model, request, s.plan.request_timeout)
