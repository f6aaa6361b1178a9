"""GGUF models convert to MLX once, on first use: the child process, its progress, one job.

`Converter.prepare` is what every path to a worker awaits first (the scheduler calls it):
a model ollmlx cannot run is refused there with its 400, and a GGUF not converted yet is
converted (`python -m ollmlx_worker.gguf`, like quantize.py runs its child) into the
store's cache, keyed by the GGUF's digest. One conversion per GGUF however many requests
wait, and across servers on one store (a lock file in the cache folder). `events` follows a
conversion as pull-style status lines, for /api/pull and /api/create.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import StatusError
from ..store.catalog import Store, StoredModel
from ..store.manifest import hex_of
from .child import ChildFailed, json_lines
from .pull import Progress

log = logging.getLogger("ollmlx.gguf")

STATUS = "converting gguf"


class _Job:
    """One conversion, followed by any number of clients."""

    def __init__(self) -> None:
        self.events: list[Progress] = []
        self.done = asyncio.Event()
        self.changed = asyncio.Event()
        self.error: StatusError | None = None

    def emit(self, event: Progress) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[Progress]:
        seen = 0
        while True:
            changed = self.changed
            while seen < len(self.events):
                yield self.events[seen]
                seen += 1
            if self.done.is_set():
                break
            await changed.wait()
        if self.error is not None:
            raise self.error


async def _child(*args: str) -> AsyncIterator[str]:
    """Lines of `python -m ollmlx_worker.gguf ARGS`; its failure as a StatusError."""
    try:
        async for line in json_lines("gguf", *args):
            yield line
    except ChildFailed as exc:
        # Exit 2: a file the converter refuses (architecture, tensor type): a 400.
        raise StatusError(exc.message, 400 if exc.code == 2 else 500) from None


async def check(path: Path) -> None:
    """Refuse (400, naming the architecture or tensor type) a GGUF the converter cannot
    convert, reading only its header."""
    async for _ in _child(str(path), "--check"):
        pass


class Converter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused: dict[str, StatusError] = {}  # GGUFs the converter refused already

    async def prepare(self, stored: StoredModel) -> StoredModel:
        """The model ready to load: refused if ollmlx cannot run it, converted if needed."""
        stored.check_runnable()
        if stored.gguf is None or stored.converted:
            return stored
        async for _ in self.events(stored.name.display, stored.gguf):
            pass
        ready = self.store.get(stored.name.display)
        if ready is None:
            raise StatusError(f"model '{stored.name.display}' not found", 404)
        ready.check_runnable()
        return ready

    def events(self, name: str, blob: Path) -> AsyncIterator[Progress]:
        """Status lines of converting the GGUF `blob` of model `name` (started unless it
        runs already), ending in `success`; a refused file raises its 400."""
        hex_digest = hex_of(blob.name)
        if hex_digest in self._refused:
            raise self._refused[hex_digest]
        job = self._jobs.get(hex_digest)
        if job is None:
            job = self._jobs[hex_digest] = _Job()
            task = asyncio.ensure_future(self._run(hex_digest, name, blob, job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return job.follow()

    async def _run(self, hex_digest: str, name: str, blob: Path, job: _Job) -> None:
        try:
            await check(blob)
            out = self.store.gguf.converted(hex_digest)
            lock = self.store.gguf.lock_path(hex_digest)
            # Another server on the store may be converting this file: wait for it.
            async with _locked(lock):
                if not (out / "config.json").is_file():
                    await self._convert(name, blob, out, job)
            job.emit(Progress("success"))
        except StatusError as exc:
            if exc.status == 400:
                self._refused[hex_digest] = exc
            log.warning("GGUF %s of %s not converted: %s", hex_digest[:12], name, exc)
            job.error = exc
        except Exception as exc:
            log.exception("converting GGUF %s failed", hex_digest[:12])
            job.error = StatusError(f"converting the GGUF failed: {exc}")
        finally:
            job.done.set()
            job.changed.set()
            del self._jobs[hex_digest]

    async def _convert(self, name: str, blob: Path, out: Path, job: _Job) -> None:
        log.info("converting GGUF of %s to MLX (first use) into %s", name, out)
        started = asyncio.get_running_loop().time()
        reported = 0
        async for line in _child(str(blob), str(out)):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                event = json.loads(line)
                status = str(event["status"])
                if status == "success":
                    continue
                done, total = int(event.get("completed", 0)), int(event.get("total", 0))
                job.emit(Progress(STATUS, f"sha256:{out.parent.name}", total, done))
                if total and done * 4 // total > reported:  # the log: every quarter
                    reported = done * 4 // total
                    log.info("converting GGUF of %s: %d/%d tensors", name, done, total)
        elapsed = asyncio.get_running_loop().time() - started
        log.info("converted GGUF of %s in %.1fs", name, elapsed)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _locked(path: Path, poll: float = 0.5) -> AsyncIterator[None]:
    """The cross-process lock on `path`, waited for without blocking the event loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(poll)
        yield
    finally:
        os.close(fd)
