"""The supervisor's side of the completion link, against raw frames on a real socket pair:
lines are sorted by stream however the reads cut them, a cancelled stream's lines go
nowhere, and a broken link ends every stream after the lines it already delivered."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from ollmlx.serving.link import LinkBroken, QuietWatch, WorkerLink


class Peer:
    """The worker's end of the pair, written and read by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)
        await asyncio.sleep(0.02)  # one read on the other end

    async def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            data += await asyncio.wait_for(
                asyncio.get_running_loop().sock_recv(self.sock, size - len(data)), 5
            )
        return data


@pytest.fixture
async def pair() -> AsyncIterator[tuple[WorkerLink, Peer]]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(WorkerLink, sock=ours)
    yield link, Peer(theirs)
    link.close()
    await asyncio.sleep(0)
    theirs.close()


async def test_lines_of_each_stream_arrive_in_order_however_the_reads_cut_them(
    pair: tuple[WorkerLink, Peer],
) -> None:
    link, peer = pair
    first, second = link.send(b'{"a":1}'), link.send(b"{}")
    assert await peer.read(len(b'R 1 7\n{"a":1}R 2 2\n{}')) == b'R 1 7\n{"a":1}R 2 2\n{}'
    await peer.write(b"1 one\n2 two\n1 thr")  # a line cut in two by the read
    assert await first.take() == [b"one"]
    assert await second.take() == [b"two"]
    await peer.write(b"ee\n2 four\n1 five\n")
    assert await first.take() == [b"three", b"five"]
    assert await second.take() == [b"four"]


async def test_a_cancelled_stream_tells_the_worker_and_its_late_lines_go_nowhere(
    pair: tuple[WorkerLink, Peer],
) -> None:
    link, peer = pair
    gone, kept = link.send(b"x"), link.send(b"y")
    await peer.read(len(b"R 1 1\nxR 2 1\ny"))
    link.forget(gone, cancel=True)
    assert await peer.read(4) == b"C 1\n"
    await peer.write(b"1 late\n2 mine\n")
    assert await kept.take() == [b"mine"]
    assert gone.lines == []
    link.forget(kept, cancel=False)  # ended by its last line: nothing to tell
    assert link.streams == {}


async def test_a_broken_link_ends_each_stream_after_the_lines_it_delivered(
    pair: tuple[WorkerLink, Peer],
) -> None:
    link, peer = pair
    stream = link.send(b"x")
    await peer.write(b"1 last words\n")
    peer.sock.close()
    await asyncio.sleep(0.02)
    assert await stream.take() == [b"last words"]
    with pytest.raises(LinkBroken):
        await stream.take()
    assert link.closed
    with pytest.raises(LinkBroken):
        link.send(b"y")  # the runner turns this into WorkerGone: nothing was sent


async def test_a_quiet_link_is_asked_about_and_its_answer_ends_every_stream(
    pair: tuple[WorkerLink, Peer],
) -> None:
    link, peer = pair
    asked: list[float] = []

    async def stalled() -> BaseException | None:
        asked.append(asyncio.get_running_loop().time())
        return RuntimeError("hung") if len(asked) == 2 else None  # ok once, then not

    watch = QuietWatch(link, 0.05, stalled)
    streams = [link.send(b"x"), link.send(b"y")]
    watch.arm()
    for _ in range(10):  # lines keep coming: nobody is asked
        await peer.write(b"1 tick\n")
    assert asked == []
    for stream in streams:
        with pytest.raises(RuntimeError, match="hung"):
            while True:
                await asyncio.wait_for(stream.take(), 1)
    assert len(asked) == 2
    watch.close()
