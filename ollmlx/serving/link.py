"""The supervisor's side of the completion link: one connection per worker carries every
completion stream (frames: ollmlx.protocol).

A decode step's lines for every stream arrive in one read and are sorted by stream id right
where they arrive (`data_received`); each stream's reader wakes once per read. One HTTP
response per request cost a read, a chunk parser and a wakeup per stream per token.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable


class LinkBroken(Exception):
    """The connection ended: the worker closed it, or it is gone."""


class LinkStream:
    """One request's lines, in the order the worker wrote them."""

    __slots__ = ("_waiter", "error", "id", "lines")

    def __init__(self, stream_id: bytes) -> None:
        self.id = stream_id
        self.lines: list[bytes] = []
        self.error: BaseException | None = None  # what ended it, raised after its lines
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self.wake()

    async def take(self) -> list[bytes]:
        """Every line that came since the last take (at least one); once they are taken,
        the error that ended the stream, if one did."""
        while not self.lines:
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        lines, self.lines = self.lines, []
        return lines


class WorkerLink(asyncio.Protocol):
    """One connection to a worker and the streams it carries."""

    def __init__(self) -> None:
        self.streams: dict[bytes, LinkStream] = {}
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self.heard = self._loop.time()  # when the worker last wrote anything
        self._transport: asyncio.Transport | None = None
        self._pending = b""  # a line the last read cut in two
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, address: str | int, secret: str, timeout: float) -> WorkerLink:
        """Connect to a worker's link (a Unix socket's path, or a port on 127.0.0.1)."""
        loop = asyncio.get_running_loop()
        if isinstance(address, str):
            connect = loop.create_unix_connection(cls, address)
        else:
            connect = loop.create_connection(cls, "127.0.0.1", address)
        _, link = await asyncio.wait_for(connect, timeout)
        link._write(b"A %s\n" % secret.encode())
        return link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.heard = self._loop.time()
        if self._pending:
            data = self._pending + data
        *lines, self._pending = data.split(b"\n")
        streams = self.streams
        touched = []
        for line in lines:
            stream_id, _, payload = line.partition(b" ")
            stream = streams.get(stream_id)
            if stream is None:
                continue  # one we cancelled: the lines it wrote before it heard
            if not stream.lines:
                touched.append(stream)
            stream.lines.append(payload)
        for stream in touched:
            stream.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail_streams(LinkBroken(str(exc) if exc else "the worker closed the link"))

    def send(self, body: bytes) -> LinkStream:
        """Start one request: its stream, whose lines come as the worker writes them."""
        if self.closed:
            raise LinkBroken("the link is closed")
        stream = LinkStream(b"%d" % next(self._ids))
        self.streams[stream.id] = stream
        self._write(b"R %s %d\n" % (stream.id, len(body)))
        self._write(body)
        return stream

    def forget(self, stream: LinkStream, cancel: bool) -> None:
        """The stream's reader is done with it; `cancel`: the worker stops it too (the
        client left before its last line)."""
        if self.streams.pop(stream.id, None) is not None and cancel and not self.closed:
            self._write(b"C %s\n" % stream.id)

    def fail_streams(self, error: BaseException) -> None:
        for stream in list(self.streams.values()):
            stream.fail(error)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)


class QuietWatch:
    """While a link carries streams but is quiet (a long prefill, or a hung worker), asks
    `stalled` every `interval` whether the worker still lives; an error it returns ends
    every stream of the link.

    The link only stamps `heard` per read: no task or timer per token, so the check costs
    nothing while tokens flow, and one check serves all the worker's streams.
    """

    def __init__(
        self,
        link: WorkerLink,
        interval: float,
        stalled: Callable[[], Awaitable[BaseException | None]],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._link = link
        self._interval = interval
        self._stalled = stalled
        self._timer: asyncio.TimerHandle | None = None
        self._check: asyncio.Task[None] | None = None

    def arm(self) -> None:
        """A stream started: watch until the link carries none."""
        if self._timer is None and self._check is None:
            self._link.heard = self.loop.time()
            self._timer = self.loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self._link.streams or self._link.closed:
            return  # nothing to watch: the next stream arms it again
        quiet = self.loop.time() - self._link.heard
        if quiet < self._interval:
            self._timer = self.loop.call_later(self._interval - quiet, self._tick)
        else:
            self._check = asyncio.ensure_future(self._ask())

    async def _ask(self) -> None:
        error = await self._stalled()
        self._check = None
        if error is not None:
            self._link.fail_streams(error)
        self.arm()

    def close(self) -> None:
        """The link is closed: no more checks."""
        if self._timer is not None:
            self._timer.cancel()
        if self._check is not None:
            self._check.cancel()
