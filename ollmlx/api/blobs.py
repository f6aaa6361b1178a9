"""HEAD and POST /api/blobs/sha256:<hex>: the files Ollama's clients upload before a create.

As Ollama's HeadBlobHandler and CreateBlobHandler (server/routes.go) answer them: HEAD is
200 or 404; POST is 201 when the blob was created, 200 when it was there already, 400 on a
digest mismatch. The body is streamed to disk while it is hashed (never held in memory),
so the app's request-body limit (`client_max_size`, which only `request.read()` applies)
does not bound it; the free disk space does (507 when it is short). A mismatched or broken
upload leaves nothing (store/blobs.py). A blob a client uploaded, or asked about, is pinned
for an hour so a concurrent delete leaves it for the create that will name it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import StatusError
from ..store.manifest import hex_of
from .context import CONTEXT

CHUNK = 1 << 20
BATCH = 8 << 20  # bytes handed to the writing thread at once


def _digest(request: web.Request) -> tuple[str, str]:
    digest = request.match_info["digest"]
    return digest, hex_of(digest)  # a 400 "invalid digest format" otherwise


async def head_blob(request: web.Request) -> web.Response:
    store = request.app[CONTEXT].store
    digest, _ = _digest(request)
    if not store.blobs.touch(digest):
        raise StatusError(f'blob "{digest}" not found', 404)
    store.blobs.pin(digest)  # the client will name it in a create instead of uploading it
    return web.Response(status=200)


async def post_blob(request: web.Request) -> web.Response:
    store = request.app[CONTEXT].store
    digest, hex_digest = _digest(request)
    if store.blobs.touch(digest):
        async for _ in request.content.iter_chunked(CHUNK):
            pass  # read (and drop) the body: the client sends all of it before it listens
        store.blobs.pin(digest)
        return web.Response(status=200)
    with store.blobs.writer(request.content_length) as writer:
        batch = bytearray()
        async for chunk in request.content.iter_chunked(CHUNK):
            batch += chunk
            if len(batch) >= BATCH:
                # Hashing and writing off the event loop, a few MiB at a time.
                await asyncio.to_thread(writer.write, bytes(batch))
                batch.clear()
        if batch:
            await asyncio.to_thread(writer.write, bytes(batch))
        _, created = await asyncio.to_thread(writer.commit, hex_digest)
    store.blobs.pin(digest)
    return web.Response(status=201 if created else 200)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_route("HEAD", "/api/blobs/{digest}", head_blob)
    router.add_post("/api/blobs/{digest}", post_blob)
