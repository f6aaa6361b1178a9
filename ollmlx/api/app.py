"""The supervisor's aiohttp application: factory, shared state, error middleware."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import msgspec
from aiohttp import web

from ..config import Settings
from ..names import InvalidName
from ..options import OptionError
from ..runner import WorkerError, WorkerProcess, WorkerSpec
from ..scheduler import QueueFull, Scheduler
from ..store import Store

log = logging.getLogger("ollmlx.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Context:
    """What every handler needs, created once per app."""

    settings: Settings
    store: Store
    scheduler: Scheduler
    session: aiohttp.ClientSession
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


CONTEXT = web.AppKey("context", Context)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# OpenAI's error types by status, as Ollama's openai.NewError picks them.
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def openai_error_body(status: int, message: str) -> dict[str, dict[str, str | None]]:
    kind = OPENAI_ERROR_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _error_for(request: web.Request, status: int, message: str) -> web.Response:
    """OpenAI clients read `error.message`: /v1 routes get OpenAI's shape, others Ollama's."""
    if request.path.startswith("/v1/"):
        return web.json_response(openai_error_body(status, message), status=status)
    return error_response(status, message)


@web.middleware
async def inflight_middleware(
    request: web.Request, handler: web.RequestHandler
) -> web.StreamResponse:
    """Count requests in flight, so shutdown can wait for them to finish."""
    ctx = request.app[CONTEXT]
    ctx.inflight += 1
    ctx.idle.clear()
    try:
        return await handler(request)
    finally:
        ctx.inflight -= 1
        if ctx.inflight == 0:
            ctx.idle.set()


async def wait_for_inflight(app: web.Application) -> None:
    """on_shutdown: listening has stopped; in-flight answers get the grace period."""
    ctx = app[CONTEXT]
    if ctx.inflight:
        grace = ctx.settings.shutdown_grace
        log.info("waiting up to %gs for %d request(s) in flight", grace, ctx.inflight)
        try:
            await asyncio.wait_for(ctx.idle.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("grace period over: ending %d request(s)", ctx.inflight)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: web.RequestHandler
) -> web.StreamResponse:
    """Errors raised before a response starts become `{"error": ...}` with a status."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error_for(request, exc.status, exc.message)
    except (OptionError, msgspec.ValidationError, msgspec.DecodeError, InvalidName) as exc:
        return _error_for(request, 400, str(exc))
    except QueueFull as exc:
        return _error_for(request, 503, str(exc))
    except WorkerError as exc:
        return _error_for(request, exc.status, str(exc))


def create_app(settings: Settings) -> web.Application:
    from . import embed, models, native, openai, pull
    from .guards import add_cors_headers, make_guards

    app = web.Application(
        middlewares=[inflight_middleware, *make_guards(settings), errors_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app.on_response_prepare.append(add_cors_headers)
    app.on_shutdown.append(wait_for_inflight)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # One shared session to all workers; no connection limit (one stream per request).
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        def spawn(spec: WorkerSpec) -> WorkerProcess:
            return WorkerProcess(
                spec,
                session,
                settings.load_timeout,
                settings.debug,
                settings.worker_memory_limit,
                settings.prompt_cache_bytes,
                use_openblas=not settings.no_openblas,
            )

        scheduler = Scheduler(settings, spawn)
        scheduler.start()
        app[CONTEXT] = Context(settings, Store(settings.models_dir), scheduler, session)
        log.info("serving models from %s", settings.models_dir)
        yield
        await scheduler.close()
        await session.close()

    app.cleanup_ctx.append(lifecycle)
    native.add_routes(app.router)
    models.add_routes(app.router)
    openai.add_routes(app.router)
    embed.add_routes(app.router)
    pull.setup(app)
    return app
