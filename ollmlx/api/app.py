"""The supervisor's aiohttp application: factory, shared state, error middleware."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import msgspec
from aiohttp import web

from ..acquire.gguf import Converter
from ..config import Settings
from ..errors import StatusError
from ..serving import prompt_disk
from ..serving.group import GroupProcess
from ..serving.runner import WorkerConfig, WorkerProcess, WorkerSpec
from ..serving.scheduler import Scheduler
from ..store.catalog import Store
from ..store.migrate import migrate
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
    """Errors raised before a response starts become `{"error": ...}` with a status.

    Whatever else escapes a handler is still a JSON error (500) that fails this request
    alone, never aiohttp's plain-text page.
    """
    try:
        return await handler(request)
    except StatusError as exc:
        return error_for(request, exc.status, exc.message)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error_for(request, 400, str(exc))
    except RecursionError:
        return error_for(request, 400, "invalid JSON: nested too deeply")
    except web.HTTPNotFound:
        # An unknown route (e.g. /api/push): JSON in the path's dialect, with gin's wording.
        return error_for(request, 404, "404 page not found")
    except web.HTTPMethodNotAllowed as exc:
        response = error_for(request, 405, "405 method not allowed")
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))  # RFC 9110: a must
        return response
    except web.HTTPException:
        raise  # aiohttp's other answers (413) keep their status
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return error_for(request, 500, f"{type(exc).__name__}: {exc}")


def create_app(settings: Settings) -> web.Application:
    from . import anthropic, blobs, embed, finetune, models, native, openai, pull, responses
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

        config = WorkerConfig(
            load_timeout=settings.load_timeout,
            debug=settings.debug,
            memory_limit=settings.worker_memory_limit,
            prompt_cache_bytes=settings.prompt_cache_bytes,
            use_openblas=not settings.no_openblas,
            max_body=settings.max_body_bytes,
            health_interval=settings.health_interval,
            health_timeout=settings.health_timeout,
            prompt_cache_disk=settings.prompt_cache_disk_bytes,
            group_timeout=settings.group_timeout,
            group_port=settings.group_port,
        )

        def spawn(spec: WorkerSpec) -> WorkerProcess:
            if spec.group is not None:
                return GroupProcess(spec, session, config)
            return WorkerProcess(spec, session, config)

        try:
            store = Store(settings.models_dir)
        except OSError as exc:  # e.g. Ollama's store of another user, read-only for us
            log.error("cannot use the model store %s: %s", settings.models_dir, exc)
            raise SystemExit(1) from None
        # Once, before serving: an old ollmlx store becomes Ollama's format, and what
        # crashed writes left behind goes.
        await asyncio.to_thread(migrate, store)
        await asyncio.to_thread(store.collect_garbage, not settings.no_prune)
        converter = Converter(store)
        scheduler = Scheduler(settings, spawn, prepare=converter.prepare)
        scheduler.start()
        app[CONTEXT] = Context(settings, store, scheduler, session, converter)
        log.info("serving models from %s", settings.models_dir)
        await asyncio.to_thread(prompt_disk.collect, settings.models_dir, store.list())
        yield
        await scheduler.close()
        await converter.close()
        await session.close()

    app.cleanup_ctx.append(lifecycle)
    native.add_routes(app.router)
    models.add_routes(app.router)
    openai.add_routes(app.router)
    responses.add_routes(app.router)
    anthropic.add_routes(app.router)
    embed.add_routes(app.router)
    blobs.add_routes(app.router)
    pull.setup(app)
    finetune.setup(app)
    return app
