"""The one generation path every dialect shares: lease a worker, stream its events.

A route translates its request into one `CompletionRequest` and picks a `Dialect`: how
the worker's events are written (NDJSON for Ollama, SSE for OpenAI).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Protocol

from aiohttp import web

from ..errors import StatusError
from ..options import kv_cache_type
from ..protocol import CompletionRequest, DoneEvent, ErrorEvent, TokenEvent
from ..serving.runner import WorkerGone
from ..store.catalog import StoredModel
from ..store.modelinfo import estimate_memory
from .context import Context

log = logging.getLogger("ollmlx.api")
RESENDS = 1  # times a request goes to a replacement when its worker was already gone


class Dialect(Protocol):
    """How one API dialect writes the worker's events: NDJSON for Ollama, SSE for OpenAI.

    Each method returns the bytes to send; an empty result sends nothing.
    """

    content_type: str

    def token(self, event: TokenEvent) -> bytes: ...

    def done(self, event: DoneEvent, total: int, load: int) -> bytes: ...

    def error(self, message: str) -> bytes: ...

    def whole(self, event: TokenEvent, done: DoneEvent, total: int, load: int) -> bytes: ...


def memory_estimate(stored: StoredModel, num_ctx: int, kv_default: str = "f16") -> int:
    """Weights, draft and KV cache; `kv_default` is OLLAMA_KV_CACHE_TYPE (the model's own
    PARAMETER kv_cache_type wins)."""
    kv_type = kv_cache_type(stored.manifest.parameters, kv_default)
    return estimate_memory(
        stored.model_dir, stored.manifest.size, num_ctx, kv_type, stored.draft_dir
    )


async def run_completion(
    request: web.Request,
    ctx: Context,
    stored: StoredModel,
    completion: CompletionRequest,
    keep_alive: float | None,
    streaming: bool,
    dialect: Dialect,
    started: int,
) -> web.StreamResponse:
    """The one generation path: lease a worker, stream its events in the route's dialect.

    The first event is awaited before the response starts, so an error there gets a
    real status code; later errors become the dialect's last error chunk.
    """
    estimate = memory_estimate(stored, completion.sampling.num_ctx, ctx.settings.kv_cache_type)
    async with contextlib.AsyncExitStack() as stack:
        for attempt in range(RESENDS + 1):
            lease = await stack.enter_async_context(ctx.scheduler.use(stored, keep_alive, estimate))
            ctx.num_ctx[stored.name.display] = completion.sampling.num_ctx
            events = lease.worker.stream(completion)
            stack.push_async_callback(events.aclose)  # its read ends with the request
            try:
                event = await anext(events)
                break
            except WorkerGone:
                # The worker died before it saw the request: send it to a replacement.
                if attempt == RESENDS:
                    raise
                await stack.aclose()
        if isinstance(event, ErrorEvent):
            raise StatusError(event.error, event.status)
        if not streaming:
            return await _collect(event, events, dialect, started, lease.load_duration)
        response = web.StreamResponse(headers={"Content-Type": dialect.content_type})
        await response.prepare(request)
        try:
            await _stream(response, event, events, dialect, started, lease.load_duration)
        except ConnectionResetError:
            # The client left mid-answer: nobody to tell. Leaving this block ends the
            # worker's stream and the lease, as a cancellation would.
            log.debug("%s %s: the client left during the answer", request.method, request.path)
        return response


async def _stream(
    response: web.StreamResponse,
    event: Any,
    events: Any,
    dialect: Dialect,
    started: int,
    load: int,
) -> None:
    """Write the worker's events in the dialect, ending with its final or error line."""
    try:
        while True:
            if isinstance(event, ErrorEvent):
                await response.write(dialect.error(event.error))
                break
            if isinstance(event, bytes):
                data = event  # a line the worker finished (`stream_as`): passed through
            elif isinstance(event, TokenEvent):
                data = dialect.token(event)
            else:
                data = dialect.done(event, time.perf_counter_ns() - started, load)
            if data:
                await response.write(data)
            if isinstance(event, DoneEvent):
                break
            event = await anext(events)
    except StatusError as exc:
        await response.write(dialect.error(str(exc)))
    await response.write_eof()


async def _collect(
    event: Any, events: Any, dialect: Dialect, started: int, load: int
) -> web.Response:
    """`"stream": false`: one JSON body with the whole text."""
    whole = TokenEvent(text="", token=-1, logprobs=[], tool_calls=[])
    while isinstance(event, TokenEvent):
        whole.text += event.text
        whole.thinking += event.thinking
        whole.logprobs.extend(event.logprobs or ())  # type: ignore[union-attr]
        whole.tool_calls.extend(event.tool_calls or ())  # type: ignore[union-attr]
        event = await anext(events)
    if isinstance(event, ErrorEvent):
        raise StatusError(event.error, event.status)
    whole.logprobs = whole.logprobs or None
    whole.tool_calls = whole.tool_calls or None
    body = dialect.whole(whole, event, time.perf_counter_ns() - started, load)
    return web.Response(body=body, content_type="application/json")
