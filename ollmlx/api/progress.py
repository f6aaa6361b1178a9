"""The progress stream that /api/pull, /api/create and /api/finetune share.

Status lines as NDJSON, as Ollama writes them; an error before the second line still gets
a real HTTP status.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import msgspec
from aiohttp import web

from ..acquire.pull import Progress, Puller
from ..errors import StatusError
from .context import error_response
from .schemas import Status, encoder

PULLER = web.AppKey("puller", Puller)
# Failures a progress stream turns into an error status or a last `{"error"}` line.
STREAM_ERRORS = (StatusError, OSError, ValueError)


# A route's events: pull-style progress, a bare status, or a status line of its own shape.
Event = Progress | str | msgspec.Struct


def _status(event: Event) -> msgspec.Struct:
    if isinstance(event, str):
        return Status(event)
    if isinstance(event, Progress):
        return Status(event.status, event.digest, event.total, event.completed)
    return event


def _code(exc: BaseException) -> int:
    return int(getattr(exc, "status", 500))


def _line(obj: object) -> bytes:
    return encoder.encode(obj) + b"\n"


async def stream_progress(
    request: web.Request, events: AsyncIterator[Event], stream: bool
) -> web.StreamResponse:
    """Status lines as NDJSON (or the last one as JSON when `stream` is false).

    The first line is held back until a second arrives: an error that early (model not
    found, unsupported) still gets a real HTTP status instead of a 200 stream.
    """
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        if not stream:
            last: msgspec.Struct | None = None
            try:
                async for event in events:
                    last = _status(event)
            except STREAM_ERRORS as exc:
                return error_response(_code(exc), str(exc))
            return web.Response(body=encoder.encode(last), content_type="application/json")
        response: web.StreamResponse | None = None
        held: list[msgspec.Struct] = []
        try:
            async for event in events:
                held.append(_status(event))
                if response is None and len(held) < 2:
                    continue
                if response is None:
                    response = await _prepare(request)
                for status in _drain(held):
                    await response.write(_line(status))
        except STREAM_ERRORS as exc:
            if response is None:
                return error_response(_code(exc), str(exc))
            await response.write(_line({"error": str(exc)}))
        if response is None:
            response = await _prepare(request)
        for status in _drain(held):
            await response.write(_line(status))
        await response.write_eof()
        return response


def _drain(held: list[msgspec.Struct]) -> Iterator[msgspec.Struct]:
    while held:
        yield held.pop(0)


async def _prepare(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    return response
