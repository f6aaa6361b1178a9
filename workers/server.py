"""The worker's HTTP side: /health and /completion on 127.0.0.1, guarded by a secret."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import msgspec
from aiohttp import web

from ollmlx.errors import StatusError
from ollmlx.protocol import (
    SECRET_HEADER,
    DoneEvent,
    EmbedResponse,
    ErrorEvent,
    Health,
    TokenEvent,
    WorkerEvent,
    embed_request_decoder,
    encoder,
    request_decoder,
)
from ollmlx.wire import token_chunk

from .engine import EmbedJob, Engine, Job

log = logging.getLogger("ollmlx.worker")


class Outbox:
    """Events from the engine thread to the event loop, with one wakeup per batch.

    Each `call_soon_threadsafe` writes to the loop's self-pipe (a system call); a decode
    step that emits one event per sequence needs only the first of them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[WorkerEvent], WorkerEvent]] = []

    def put(self, queue: asyncio.Queue[WorkerEvent], event: WorkerEvent) -> None:
        with self._lock:
            self._pending.append((queue, event))
            if len(self._pending) > 1:
                return  # a drain is already on its way
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, event in pending:
            queue.put_nowait(event)


ENGINE = web.AppKey("engine", Engine)
SECRET = web.AppKey("secret", str)
PROMPTS = web.AppKey("prompts", ThreadPoolExecutor)
OUTBOX = web.AppKey("outbox", Outbox)


@web.middleware
async def require_secret(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    # Another local user can reach a loopback port; only the supervisor knows the secret.
    expected = request.app[SECRET]
    if not hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), expected):
        return web.json_response({"error": "unauthorized"}, status=401)
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    status, error = engine.status, engine.error
    if status in ("ok", "loading") and not engine.alive and engine.started:
        status, error = "error", error or "the engine thread is gone"
    active, cached, peak = engine.memory_now()
    body = Health(
        status=status,
        memory_bytes=max(engine.memory_bytes, active + cached),
        active_bytes=active,
        cache_bytes=cached,
        peak_bytes=peak,
        context_length=engine.context_length,
        error=error,
        progress=1.0 if status == "ok" else 0.0,
        rank_memory=list(engine.driver.rank_memory),
    )
    return web.Response(body=encoder.encode(body), content_type="application/json")


async def completion(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    if engine.status != "ok":
        return web.json_response({"error": engine.error or "model not loaded"}, status=503)
    try:
        completion_request = request_decoder.decode(await request.read())
    except msgspec.ValidationError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[WorkerEvent] = asyncio.Queue()
    outbox = request.app[OUTBOX]
    job = Job(completion_request, lambda e: outbox.put(events, e))
    if not engine.vision and engine.generative:
        # Template and tokenizer run beside the engine thread, not on it (no MLX there).
        try:
            job.prompt = await loop.run_in_executor(
                request.app[PROMPTS], engine.prepare, completion_request
            )
        except StatusError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        except Exception as exc:  # a bug of ours: this request fails, the worker goes on
            log.exception("building the prompt failed")
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
    engine.submit(job)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    line, out = bytearray(), bytearray()
    try:
        await response.prepare(request)
        stream_as = completion_request.stream_as
        ended = False
        while not ended:
            # Every event that is already here goes out in one write.
            out.clear()
            event = await events.get()
            while True:
                if stream_as is not None and isinstance(event, TokenEvent):
                    # The client's own line, so the supervisor can pass it on untouched.
                    encoder.encode_into(token_chunk(stream_as, event), line)
                else:
                    encoder.encode_into(event, line)
                out += line
                out += b"\n"
                ended = isinstance(event, ErrorEvent | DoneEvent)
                if ended or events.empty():
                    break
                event = events.get_nowait()
            await response.write(bytes(out))
    finally:
        # Runs on normal end and when aiohttp cancels us because the client left.
        job.cancelled.set()
    await response.write_eof()
    return response


async def embed(request: web.Request) -> web.Response:
    """Vectors for a list of inputs, computed on the engine thread in batches."""
    engine = request.app[ENGINE]
    if engine.status != "ok":
        return web.json_response({"error": engine.error or "model not loaded"}, status=503)
    if not engine.driver.embeds:  # the supervisor refuses it first
        return web.json_response({"error": "a distributed group does not embed"}, status=400)
    try:
        embed_request = embed_request_decoder.decode(await request.read())
    except msgspec.ValidationError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[EmbedResponse | ErrorEvent] = loop.create_future()

    def settle(result: EmbedResponse | ErrorEvent) -> None:
        if not reply.done():  # cancelled when the client left
            reply.set_result(result)

    def answer(result: EmbedResponse | ErrorEvent) -> None:
        loop.call_soon_threadsafe(settle, result)

    job = EmbedJob(embed_request, answer)
    engine.submit(job)
    try:
        result = await reply
    finally:
        job.cancelled.set()  # a client that left: the engine skips a job not yet started
    if isinstance(result, ErrorEvent):
        return web.json_response({"error": result.error}, status=result.status)
    return web.Response(body=encoder.encode(result), content_type="application/json")


def create_app(engine: Engine, secret: str, max_body: int = 64 << 20) -> web.Application:
    # The supervisor already bounded the client's body; this hop must not be narrower
    # (aiohttp's default is 1 MiB, less than one large image).
    app = web.Application(middlewares=[require_secret], client_max_size=max_body + (1 << 20))
    app[ENGINE] = engine
    app[SECRET] = secret
    app[PROMPTS] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prompt")

    async def start_outbox(app: web.Application) -> None:
        app[OUTBOX] = Outbox(asyncio.get_running_loop())

    app.on_startup.append(start_outbox)
    app.router.add_get("/health", health)
    app.router.add_post("/completion", completion)
    app.router.add_post("/embed", embed)
    return app
