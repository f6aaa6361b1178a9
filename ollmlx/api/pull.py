"""POST /api/pull: a model from Hugging Face, with Ollama's progress lines."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from ..acquire.pull import Puller
from ..errors import StatusError
from ..store.names import parse_name
from .context import CONTEXT, read_body
from .progress import PULLER, stream_progress

log = logging.getLogger("ollmlx.api")


class PullRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # deprecated spelling of `model`
    insecure: bool = False  # accepted for Ollama compatibility; the Hub is always https
    stream: bool | None = None


_pull_decoder = msgspec.json.Decoder(PullRequest)


async def pull(request: web.Request) -> web.StreamResponse:
    req: PullRequest = await read_body(request, _pull_decoder)
    name = req.model or req.name
    try:
        parse_name(name)
    except StatusError:
        raise StatusError("invalid model name", 400) from None
    events = request.app[PULLER].pull(name)
    return await stream_progress(request, events, stream=req.stream is not False)


def setup(app: web.Application) -> None:
    """Register /api/pull and the puller that lives as long as the app."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        puller = app[PULLER] = Puller(app[CONTEXT].store)
        yield
        await puller.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api/pull", pull)
