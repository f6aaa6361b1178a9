"""One record per request, and how a client's exception becomes one."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anthropic
import httpx
import ollama
import openai

OK, DISCONNECTED, REJECTED, ERROR, LOST = "ok", "disconnected", "rejected", "error", "lost"


@dataclass
class Outcome:
    kind: str  # "ollama.generate.stream", "bad.min_p", ...
    model: str
    started: float  # time.monotonic()
    ended: float
    result: str  # ok | disconnected | rejected (a bad input refused as expected) | error | lost
    status: int | None = None  # HTTP status, None for an error line in a stream
    message: str = ""
    expected: tuple[int, ...] = ()  # a bad input's expected statuses (empty: a valid request)

    @property
    def family(self) -> str:
        """The kind without its streamed/whole suffix: "openai.chat", "ollama.embed"."""
        return self.kind.removesuffix(".stream").removesuffix(".whole")

    @property
    def bad(self) -> bool:
        return bool(self.expected)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def label(self) -> str:
        """The kind of failure, for "errors by kind": status and message, digits elided."""
        where = "stream" if self.status is None else str(self.status)
        return f"{self.result} {where}: {re.sub(r'[0-9]+', 'N', self.message)[:90]}"


class Disconnected(Exception):
    """The client dropped a stream on purpose."""


class StreamError(Exception):
    """An error event inside a stream that the client does not raise itself."""


class Incomplete(Exception):
    """A stream or body ended without its final line and without an error: lost."""


def classify(exc: BaseException) -> tuple[str, int | None, str]:
    """(result, status, message) for an exception a client raised."""
    if isinstance(exc, Disconnected):
        return DISCONNECTED, None, ""
    if isinstance(exc, StreamError):
        return ERROR, None, str(exc)
    if isinstance(exc, Incomplete):
        return LOST, None, f"incomplete: {exc}"
    if isinstance(exc, asyncio.TimeoutError | httpx.TimeoutException):
        return LOST, None, f"hang: no answer in time ({type(exc).__name__})"
    if isinstance(exc, ollama.ResponseError):
        # -1: an {"error"} line inside a 200 stream; otherwise the HTTP status.
        return ERROR, (None if exc.status_code == -1 else exc.status_code), str(exc.error)
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        status = exc.status_code if exc.status_code != 200 else None  # 200: an SSE error event
        return ERROR, status, _message(exc.body) or str(exc)
    if isinstance(exc, openai.APITimeoutError | anthropic.APITimeoutError):
        return LOST, None, "hang: no answer in time"
    if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError):
        return LOST, None, f"cut: {exc.__cause__ or exc}"
    if isinstance(exc, openai.APIError | anthropic.APIError):
        return ERROR, None, _message(exc.body) or str(exc)  # an error event in a stream
    if isinstance(exc, ConnectionError):  # the ollama client's "could not connect"
        return LOST, None, f"refused: {exc}"
    if isinstance(exc, httpx.HTTPError):  # a stream cut mid-way (no final line, no error)
        return LOST, None, f"cut: {type(exc).__name__}: {exc}"
    # The client could not read the answer (a malformed body): a failure as well.
    return ERROR, 0, f"unreadable answer: {type(exc).__name__}: {exc}"


def _message(body: object) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message", ""))
        return str(error)
    return ""


async def timed(
    kind: str,
    model: str,
    request: Callable[[], Awaitable[None]],
    timeout: float,
    expected: tuple[int, ...] = (),
) -> Outcome:
    """Run one request; its exceptions become the outcome (never the caller's problem)."""
    started = time.monotonic()
    status: int | None
    try:
        await asyncio.wait_for(request(), timeout)
        result, status, message = OK, 200, ""
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        result, status, message = classify(exc)
    return Outcome(kind, model, started, time.monotonic(), result, status, message, expected)
