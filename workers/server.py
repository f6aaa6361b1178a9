"""The worker's HTTP side: /health and /embed on 127.0.0.1, guarded by a secret.

Completions take the link (link.py), which carries every stream on one connection.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import msgspec
from aiohttp import web

from ollmlx.protocol import (
    SECRET_HEADER,
    EmbedResponse,
    ErrorEvent,
    Health,
    embed_request_decoder,
    encoder,
)

from .engine import EmbedJob, Engine

log = logging.getLogger("ollmlx.worker")


ENGINE = web.AppKey("engine", Engine)
SECRET = web.AppKey("secret", str)


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
    app.router.add_get("/health", health)
    app.router.add_post("/embed", embed)
    return app
