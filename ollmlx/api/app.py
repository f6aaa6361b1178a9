"""The supervisor's aiohttp application: factory, shared state, error middleware."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

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


CONTEXT = web.AppKey("context", Context)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: web.RequestHandler
) -> web.StreamResponse:
    """Errors raised before a response starts become `{"error": ...}` with a status."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    except (OptionError, msgspec.ValidationError, msgspec.DecodeError, InvalidName) as exc:
        return error_response(400, str(exc))
    except QueueFull as exc:
        return error_response(503, str(exc))
    except WorkerError as exc:
        return error_response(exc.status, str(exc))


def create_app(settings: Settings) -> web.Application:
    from . import models, native
    from .guards import add_cors_headers, make_guards

    app = web.Application(
        middlewares=[*make_guards(settings), errors_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app.on_response_prepare.append(add_cors_headers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # One shared session to all workers; no connection limit (one stream per request).
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        def spawn(spec: WorkerSpec) -> WorkerProcess:
            return WorkerProcess(
                spec, session, settings.load_timeout, settings.debug, settings.worker_memory_limit
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
    return app
