"""Anthropic's dialect through the official `anthropic` client: /v1/messages, streamed
(final event `message_stop`; an `error` event raises in the client) and not."""

from __future__ import annotations

from typing import Any

from .outcomes import Disconnected, Incomplete, Outcome, timed
from .session import Session


async def messages(s: Session, model: str) -> Outcome:
    stream, tokens = s.stream(), s.tokens()
    drop = s.disconnect_after() if stream else None
    turns: Any = [{"role": "user", "content": s.prompt()}]

    async def request() -> None:
        create = s.anthropic.messages.create
        if not stream:
            message = await create(model=model, max_tokens=tokens, messages=turns)
            if message.stop_reason is None:
                raise Incomplete("no stop_reason")
            return
        events = await create(model=model, max_tokens=tokens, messages=turns, stream=True)
        seen, final = 0, False
        try:
            async for event in events:
                seen += 1
                final = final or event.type == "message_stop"
                if drop is not None and seen >= drop and not final:
                    raise Disconnected
        finally:
            await events.close()
        if not final:
            raise Incomplete(f"{seen} event(s), no message_stop")

    kind = "anthropic.messages." + ("stream" if stream else "whole")
    return await timed(kind, model, request, s.plan.request_timeout)
