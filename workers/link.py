"""The worker's side of the completion link: one connection from the supervisor carries
every completion stream of this worker (frames: ollmlx.protocol).

Requests come in as frames; the engine's events go out through the `Outbox`, which hands
every stream's lines of one decode step to the event loop at once, and each connection
then writes them in one system call (one HTTP response per request wrote one each).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import msgspec

from ollmlx.errors import StatusError
from ollmlx.protocol import (
    REFUSED_PREFIX,
    DoneEvent,
    ErrorEvent,
    TokenEvent,
    WorkerEvent,
    encoder,
    request_decoder,
)
from ollmlx.wire import token_chunk

from .engine import Engine, Job

log = logging.getLogger("ollmlx.worker")


class Outbox:
    """Events from the engine thread to the event loop, with one wakeup per batch.

    Each `call_soon_threadsafe` writes to the loop's self-pipe (a system call); a decode
    step that emits one event per sequence needs only the first of them. After a batch is
    delivered, every connection it touched writes once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[LinkStream, WorkerEvent]] = []

    def put(self, stream: LinkStream, event: WorkerEvent) -> None:
        with self._lock:
            self._pending.append((stream, event))
            if len(self._pending) > 1:
                return  # a drain is already on its way
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        touched: list[LinkConnection] = []
        for stream, event in pending:
            if stream.connection.deliver(stream, event):
                touched.append(stream.connection)
        for connection in dict.fromkeys(touched):
            connection.flush()


class LinkStream:
    """One request on a connection: its id (as written in frames) and its job."""

    __slots__ = ("connection", "id", "job", "stream_as")

    def __init__(self, connection: LinkConnection, stream_id: bytes, job: Job) -> None:
        self.connection = connection
        self.id = stream_id
        self.job = job
        self.stream_as = job.request.stream_as


class LinkConnection:
    """One supervisor connection: its streams, and the bytes of the step being written."""

    def __init__(self, server: LinkServer, writer: asyncio.StreamWriter) -> None:
        self._server = server
        self._writer = writer
        self.streams: dict[bytes, LinkStream] = {}
        self._out = bytearray()
        self._line = bytearray()
        self._loop = asyncio.get_running_loop()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Read frames until the supervisor closes the connection (or sends garbage)."""
        while header := await reader.readline():
            kind, _, rest = header.rstrip(b"\n").partition(b" ")
            if kind == b"R":
                stream_id, _, length = rest.partition(b" ")
                body = await reader.readexactly(int(length))
                self._begin(stream_id, body)
            elif kind == b"C":
                stream = self.streams.pop(rest, None)
                if stream is not None:  # its client left: the engine drops the sequence
                    stream.job.cancelled.set()
            else:
                raise ValueError(f"unknown frame {header[:40]!r}")

    def _begin(self, stream_id: bytes, body: bytes) -> None:
        engine = self._server.engine
        if engine.status != "ok":
            self._refuse(stream_id, engine.error or "model not loaded", 503)
            return
        try:
            request = request_decoder.decode(body)
        except msgspec.ValidationError as exc:
            self._refuse(stream_id, str(exc), 400)
            return
        outbox = self._server.outbox
        job = Job(request, lambda event: outbox.put(stream, event))
        stream = LinkStream(self, stream_id, job)
        self.streams[stream_id] = stream
        if engine.vision or not engine.generative:
            engine.submit(job)
            return
        # Template and tokenizer run beside the engine thread, not on it (no MLX there),
        # and that thread hands the job on: a hop back to this loop first cost TTFT.
        self._server.prompts.submit(self._prepare, stream)

    def _prepare(self, stream: LinkStream) -> None:
        """On a prompt thread: a text model's prompt, then the job goes to the engine."""
        job, engine = stream.job, self._server.engine
        try:
            job.prompt = engine.prepare(job.request)
        except StatusError as exc:
            self._loop.call_soon_threadsafe(self._end_refused, stream, exc.message, exc.status)
            return
        except Exception as exc:  # a bug of ours: this request fails, the worker goes on
            log.exception("building the prompt failed")
            message = f"{type(exc).__name__}: {exc}"
            self._loop.call_soon_threadsafe(self._end_refused, stream, message, 500)
            return
        if not job.cancelled.is_set():  # else its client left while the prompt was built
            engine.submit(job)

    def _end_refused(self, stream: LinkStream, message: str, status: int) -> None:
        if self.streams.pop(stream.id, None) is not None:
            self._refuse(stream.id, message, status)

    def _refuse(self, stream_id: bytes, message: str, status: int) -> None:
        self._out += b"%s %s%d %s\n" % (stream_id, REFUSED_PREFIX, status, encoder.encode(message))
        self.flush()

    def deliver(self, stream: LinkStream, event: WorkerEvent) -> bool:
        """Add one event's line to this step's bytes; False if its stream is gone."""
        if self.streams.get(stream.id) is not stream:
            return False  # cancelled: its lines go nowhere
        line = self._line
        if stream.stream_as is not None and isinstance(event, TokenEvent):
            # The client's own line, so the supervisor can pass it on untouched.
            encoder.encode_into(token_chunk(stream.stream_as, event), line)
        else:
            encoder.encode_into(event, line)
            if isinstance(event, DoneEvent | ErrorEvent):
                del self.streams[stream.id]  # its last line
        self._out += stream.id
        self._out += b" "
        self._out += line
        self._out += b"\n"
        return True

    def flush(self) -> None:
        if self._out and not self._writer.is_closing():
            self._writer.write(bytes(self._out))
        self._out.clear()

    def abandon(self) -> None:
        """The supervisor is gone: every stream of this connection is cancelled."""
        for stream in self.streams.values():
            stream.job.cancelled.set()
        self.streams.clear()

    async def close(self) -> None:
        self.flush()
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class LinkServer:
    """Accepts the supervisor's link connections: a Unix socket at `path`, or, where the
    platform has none (or `path` is empty), a TCP port on 127.0.0.1."""

    def __init__(self, engine: Engine, secret: str) -> None:
        self.engine = engine
        # Templates and tokenizers run here, beside the engine thread (no MLX).
        self.prompts = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prompt")
        self._secret = b"A " + secret.encode()
        self.outbox = Outbox(asyncio.get_running_loop())  # made on the loop it serves
        self._server: asyncio.Server | None = None
        self._connections: set[LinkConnection] = set()

    async def start(self, path: str) -> str | int:
        """Listen; the address the supervisor connects to (a path, or a port)."""
        if path:
            self._server = await asyncio.start_unix_server(self._accept, path=path)
            return path
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Another local user can reach a loopback port; only the supervisor knows the secret.
        hello = (await reader.readline()).rstrip(b"\n")
        if not hmac.compare_digest(hello, self._secret):
            log.warning("refused a link connection without the secret")
            writer.close()
            return
        connection = LinkConnection(self, writer)
        self._connections.add(connection)
        try:
            await connection.serve(reader)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("the supervisor's link broke: %s", exc)
        finally:
            self._connections.discard(connection)
            connection.abandon()
            writer.close()

    async def close(self) -> None:
        """After the engine ended its requests: their last lines go out, then we close."""
        await asyncio.sleep(0)  # the engine's last events are delivered first
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            await connection.close()


def remove_socket(path: str) -> None:
    """The link's socket, and the folder the supervisor made for it, once empty."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))
