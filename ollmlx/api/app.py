"""The supervisor's aiohttp application: factory, shared state, error middleware."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import msgspec
from aiohttp import web

from ..config import Settings
from ..errors import StatusError
from ..serving.runner import WorkerProcess, WorkerSpec
from ..serving.scheduler import Scheduler
from ..store.catalog import Store
from .context import CONTEXT, Context, error_for

log = logging.getLogger("ollmlx.api")


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
    """Errors raised before a response starts become the dialect's error with a status."""
    try:
        return await handler(request)
    except StatusError as exc:
        return error_for(request, exc.status, exc.message)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error_for(request, 400, str(exc))
    except web.HTTPNotFound:
        # An unknown route (e.g. /api/push): JSON in the path's dialect, with gin's wording.
        return error_for(request, 404, "404 page not found")
    except web.HTTPMethodNotAllowed:
        return error_for(request, 405, "405 method not allowed")


def create_app(settings: Settings) -> web.Application:
    from . import anthropic, embed, models, native, openai, pull, responses
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
    responses.add_routes(app.router)
    anthropic.add_routes(app.router)
    embed.add_routes(app.router)
    pull.setup(app)
    return app
