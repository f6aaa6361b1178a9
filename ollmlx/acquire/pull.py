"""Pulls: one download per repo and revision, however many clients ask, with progress.

A pull resolves the name, lets one job fetch and verify the files into the Hugging Face
cache (hub.py, in threads), then installs them into the store in one step and writes the
manifest. Clients that ask for a model already being pulled follow the same job; when
every client has gone, the job stops at the next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..errors import StatusError
from ..store.aliases import HubRef, alias_table, resolve
from ..store.catalog import Store, StoredModel
from ..store.modelinfo import capabilities, describe
from ..store.names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName, parse_name
from ..store.spec import ModelSpec
from . import hub
from .hub import Plan, RemoteFile

log = logging.getLogger("ollmlx.pull")


@dataclass(frozen=True)
class Progress:
    """One of Ollama's pull status lines."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


def _label(remote: RemoteFile) -> tuple[str, str]:
    return f"pulling {remote.sha256[:12]}", f"sha256:{remote.sha256}"


class _Job:
    """One running download, followed by any number of clients."""

    def __init__(self) -> None:
        self.events: list[Progress] = []
        self.plan: Plan | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.followers = 0
        self.cancel = threading.Event()
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def emit(self, event: Progress) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def finish(self, error: BaseException | None = None) -> None:
        self.error, self.finished = error, True
        self._changed.set()

    async def follow(self) -> AsyncIterator[Progress]:
        self.followers += 1
        seen = 0
        try:
            while True:
                changed = self._changed
                while seen < len(self.events):
                    yield self.events[seen]
                    seen += 1
                if self.finished:
                    break
                await changed.wait()
        finally:
            self.followers -= 1
            if self.followers == 0 and not self.finished:
                log.info("every client of the pull went away: stopping it")
                self.cancel.set()
        if self.error is not None:
            raise self.error


def _throttled(
    loop: asyncio.AbstractEventLoop, job: _Job, template: Progress
) -> Callable[[int], None]:
    """A progress callback for the download thread: at most ten events a second."""
    last = 0.0

    def sink(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 0.1:
            last = now
            event = dataclasses.replace(template, completed=done)
            loop.call_soon_threadsafe(job.emit, event)

    return sink


async def _not_found(name: ModelName, error: StatusError) -> StatusError:
    """A short name the alias table does not know: the 404 names the mlx-community repos
    the hub finds for it ("did you mean ..."), which pull by their own names."""
    unknown = (
        name.host == DEFAULT_HOST
        and name.namespace == DEFAULT_NAMESPACE
        and name.model.lower() not in alias_table()
    )
    candidates = (
        await asyncio.to_thread(hub.search_candidates, name.model, name.tag) if unknown else []
    )
    if not candidates:
        return StatusError(str(error), 404)
    return StatusError(
        f"pull model manifest: file does not exist: {name.model!r} is not a known model "
        f"name; did you mean {', '.join(candidates)}? Pull one by its name, e.g. "
        f"ollmlx pull {candidates[0]}",
        404,
    )


class Puller:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: dict[tuple[str, str], _Job] = {}

    async def pull(self, text: str) -> AsyncIterator[Progress]:
        """Ollama's status lines for pulling `text`, ending in `success`."""
        name = parse_name(text)
        try:
            ref = resolve(name)
        except StatusError as exc:
            raise await _not_found(name, exc) from None
        yield Progress("pulling manifest")
        job = self._job(ref)
        async for event in job.follow():
            yield event
        assert job.plan is not None
        yield Progress("writing manifest")
        stored = await asyncio.to_thread(install, self.store, text, job.plan)
        log.info("pulled %s from %s (%s)", stored.name.display, ref, job.plan.commit)
        yield Progress("success")

    def _job(self, ref: HubRef) -> _Job:
        key = (ref.repo_id.lower(), ref.revision)
        job = self._jobs.get(key)
        if job is None or job.cancel.is_set():
            job = self._jobs[key] = _Job()
            job.task = asyncio.create_task(self._run(key, ref, job))
        return job

    async def _run(self, key: tuple[str, str], ref: HubRef, job: _Job) -> None:
        try:
            job.plan = await asyncio.to_thread(hub.plan_pull, ref)
            await self._fetch(job, job.plan)
            job.finish()
        except hub.Cancelled as exc:
            job.finish(StatusError("pull canceled", 499))
            log.debug("pull of %s canceled: %s", ref, exc)
        except StatusError as exc:
            log.warning("pull of %s failed: %s", ref, exc)
            job.finish(exc)
        except Exception as exc:  # anything else still ends every follower's stream
            log.exception("pull of %s failed", ref)
            job.finish(StatusError(f"pull failed: {exc}"))
        finally:
            if self._jobs.get(key) is job:
                del self._jobs[key]

    async def _fetch(self, job: _Job, plan: Plan) -> None:
        loop = asyncio.get_running_loop()
        for remote in plan.files:  # small files are already here (plan_pull checked them)
            if remote.path is not None:
                status, digest = _label(remote)
                job.emit(Progress(status, digest, remote.size, remote.size))
        await asyncio.to_thread(hub.check_disk_space, plan, self.store.root)
        for remote in plan.files:
            if remote.path is not None:
                continue
            status, digest = _label(remote)
            job.emit(Progress(status, digest, remote.size, 0))

            sink = _throttled(loop, job, Progress(status, digest, remote.size))

            remote.path = await asyncio.to_thread(hub.download, plan, remote, sink, job.cancel)
            job.emit(Progress(status, digest, remote.size, remote.size))
        job.emit(Progress("verifying sha256 digest"))
        for remote in plan.files:
            assert remote.path is not None
            got = await asyncio.to_thread(hub.sha256_file, remote.path)
            if remote.sha256 and got != remote.sha256:
                await asyncio.to_thread(hub.discard, remote.path)
                raise StatusError(
                    "digest mismatch, file must be downloaded again: "
                    f"want sha256:{remote.sha256}, got sha256:{got} ({remote.name})"
                )
            remote.sha256 = got

    async def close(self) -> None:
        """Stop every running pull (at its next chunk) and wait for it."""
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        for job in jobs:
            if job.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(job.task, 30)


def install(store: Store, text: str, plan: Plan) -> StoredModel:
    """Link the fetched files into the store's blobs, then write the manifest."""
    created: set[str] = set()
    with store.scratch() as staging:
        for remote in plan.files:
            assert remote.path is not None
            (staging / remote.name).parent.mkdir(parents=True, exist_ok=True)
            (staging / remote.name).symlink_to(remote.path.resolve())
        known = {f.name: f.sha256 for f in plan.files}
        try:
            layers = store.add_dir(staging, known, created=created)
            spec = ModelSpec(
                source=str(plan.ref),
                repo=plan.ref.repo_id,
                revision=plan.commit,
                details=describe(staging),
                capabilities=capabilities(staging),
            )
            sources = {layer.digest: staging / layer.name for layer in layers}
            return store.write(text, layers, spec, sources=sources)
        except BaseException:
            store.discard(created)
            raise
