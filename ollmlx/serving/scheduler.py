"""Which worker serves a request, when one starts and when one goes: decided here only.

One table of runner states guarded by one condition. Named steps each make one decision,
after Ollama's server/sched.go: `_get_runner`, `_find_runner_to_unload`, `_release`,
`_retire`. Dependencies come in through `spawn`, so tests can swap the process.

Two rules keep one client from hurting another:
- Nothing stops a worker that still serves a request. `keep_alive: 0`, `stop` and
  delete mark the runner; it goes when its last request ends (Ollama's
  `sessionDuration = 0` and `processCompleted`).
- Decisions are made under the lock, process stops run outside it: a worker that takes
  seconds to exit never delays a request to another model. A stopping worker's memory
  still counts until its process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..config import Settings
from ..errors import StatusError
from ..options import draft_num_predict, kv_cache_type
from ..store.catalog import StoredModel
from .group import GroupPlan, host_share, plan_group
from .prompt_disk import folder_for
from .runner import WorkerProcess, WorkerSpec

log = logging.getLogger("ollmlx.scheduler")

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
MAX_START_BACKOFF = 30.0
# A request whose worker died before it started is moved to a replacement this many times.
MAX_REPLACEMENTS = 2


@dataclass(eq=False)
class RunnerRef:
    model: StoredModel
    worker: WorkerProcess
    estimate: int
    slots: asyncio.Semaphore
    ready: asyncio.Future[None] | None = None
    ref_count: int = 0
    keep_alive: float = 300.0  # the duration of the request that attached last
    expires_at: float = math.inf  # time.time() when it unloads; inf while busy or forever
    expiry: asyncio.TimerHandle | None = None
    last_used: float = field(default_factory=time.monotonic)
    watcher: asyncio.Task[None] | None = None
    retiring: bool = False  # takes no new requests; goes when the last one ends
    stopping: bool = False  # its process is being stopped (on purpose)

    @property
    def name(self) -> str:
        return self.model.name.display

    @property
    def memory_bytes(self) -> int:
        """What the budget counts: the estimate (weights + a full KV cache for the
        context) until the worker holds more than that."""
        return max(self.estimate, self.worker.held_bytes, self.worker.memory_bytes)

    @property
    def held_bytes(self) -> int:
        """What the worker really holds (its last health check), as /api/ps shows it."""
        return self.worker.held_bytes or self.worker.memory_bytes or self.estimate

    @property
    def loaded(self) -> bool:
        return self.ready is not None and self.ready.done() and not self.ready.exception()


@dataclass
class StartFailure:
    """A model whose worker failed to start: no new spawn before `retry_at`."""

    digest: str
    count: int
    retry_at: float
    error: str


@dataclass(eq=False)
class Reservation:
    """Memory of the budget held by work that is no model worker (a fine-tuning job)."""

    name: str
    size: int


@dataclass
class Lease:
    worker: WorkerProcess
    load_duration: int  # nanoseconds spent waiting for the model to load


Prepare = Callable[[StoredModel], Awaitable[StoredModel]]


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        spawn: Callable[[WorkerSpec], WorkerProcess],
        prepare: Prepare | None = None,
    ) -> None:
        self._settings = settings
        self._spawn = spawn
        # What a model needs before a worker can load it (a GGUF converts on first use),
        # awaited outside the lock: one model's conversion never holds up another's load.
        self._prepare = prepare
        self._runners: dict[str, RunnerRef] = {}  # by name: the runners new requests use
        self._retired: set[RunnerRef] = set()  # draining or stopping: memory still theirs
        self._changed = asyncio.Condition()
        self._pending = 0
        self._closing = False
        self._failures: dict[str, StartFailure] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._stops: set[asyncio.Task[None]] = set()
        self._reservations: set[Reservation] = set()  # bytes held outside any worker

    # -- public ------------------------------------------------------------------

    def start(self) -> None:
        """Start the health monitor (needs the running loop)."""
        self._monitor = asyncio.ensure_future(self._monitor_health())

    @contextlib.asynccontextmanager
    async def use(
        self, model: StoredModel, keep_alive: float | None, estimate: int
    ) -> AsyncIterator[Lease]:
        """Hold a loaded worker for one request; queue when all its slots are busy."""
        keep = self._settings.keep_alive if keep_alive is None else keep_alive
        if self._pending >= self._settings.max_queue:
            raise StatusError(QUEUE_FULL, 503)
        if self._prepare is not None:
            model = await self._prepare(model)
        self._pending += 1
        started = time.perf_counter_ns()
        try:
            ref = await self._attach(model, keep, estimate)
        finally:
            self._pending -= 1
        try:
            yield Lease(ref.worker, time.perf_counter_ns() - started)
        finally:
            await self._release(ref, holds_slot=True)

    async def load(self, model: StoredModel, keep_alive: float | None, estimate: int) -> int:
        """Load without generating (empty prompt); return the load time in nanoseconds."""
        async with self.use(model, keep_alive, estimate) as lease:
            return lease.load_duration

    @contextlib.asynccontextmanager
    async def reserve(self, name: str, size: int) -> AsyncIterator[Reservation]:
        """Hold `size` bytes of the memory budget for the block (a fine-tuning job).

        Counted like a loaded model: idle models are evicted to make room and busy ones
        are waited for; while held, model loads see the bytes as used. A size above the
        whole budget can never fit: a 400 at once, naming both figures.
        """
        budget = self._settings.memory_budget
        if size > budget:
            raise StatusError(
                f"{name} needs about {_size(size)} of memory but the memory budget is "
                f"{_size(budget)} (OLLMLX_MEMORY_BUDGET)",
                400,
            )
        held = Reservation(name, size)
        waiting = False
        async with self._changed:
            while True:
                if self._closing:
                    raise StatusError("the server is shutting down", 503)
                refs = [*self._runners.values(), *self._retired]
                if sum(r.memory_bytes for r in refs) + self._reserved() + size <= budget:
                    break
                victim = self._find_runner_to_unload()
                if victim is not None:
                    self._stop_later(victim, f"evicted to make room for {name}")
                elif not waiting:
                    log.info("waiting for busy models to finish before %s", name)
                    waiting = True
                await self._changed.wait()
            self._reservations.add(held)
        log.info("reserved %s of memory for %s", _size(size), name)
        try:
            yield held
        finally:
            self._reservations.discard(held)  # at once: a cancelled release still frees it
            log.debug("released %s of memory held by %s", _size(size), name)
            async with self._changed:
                self._changed.notify_all()

    async def resize(self, held: Reservation, size: int) -> None:
        """Correct a held reservation to a better estimate (a job's own, once it counted
        its tokens). Less frees room for waiting loads; more evicts idle models until the
        total fits again, but never waits: the work is already running."""
        async with self._changed:
            if held not in self._reservations or size == held.size:
                return
            log.info("memory held by %s: %s, was %s", held.name, _size(size), _size(held.size))
            held.size = size
            refs = [*self._runners.values(), *self._retired]
            excess = sum(r.memory_bytes for r in refs) + self._reserved()
            excess -= self._settings.memory_budget
            while excess > 0 and (victim := self._find_runner_to_unload()) is not None:
                self._stop_later(victim, f"evicted to make room for {held.name}")
                excess -= victim.memory_bytes
            self._changed.notify_all()

    async def unload(self, name: str) -> bool:
        """`keep_alive: 0` / `ollmlx stop`: unload as soon as the last request ends."""
        async with self._changed:
            ref = self._runners.get(name)
            if ref is None:
                return False
            ref.keep_alive = 0.0
            if ref.ref_count == 0:
                self._stop_later(ref, "requested")
            else:
                log.info("%s unloads when its %d request(s) end", name, ref.ref_count)
            return True

    async def retire(self, name: str, reason: str) -> None:
        """Take no new requests for `name` (deleted); it goes when its last one ends."""
        async with self._changed:
            ref = self._runners.get(name)
            if ref is not None:
                self._retire(ref, reason)

    def loaded(self) -> list[RunnerRef]:
        """Loaded runners, longest remaining time first (as /api/ps orders them)."""
        refs = [r for r in self._runners.values() if r.loaded and not r.worker.has_exited]
        return sorted(refs, key=lambda r: r.expires_at, reverse=True)

    async def close(self) -> None:
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
        async with self._changed:
            refs = [*self._runners.values(), *self._retired]
            log.info("shutting down: stopping %d worker(s)", len(refs))
            for ref in refs:
                self._stop_later(ref, "shutdown")
        await asyncio.gather(*list(self._stops), return_exceptions=True)

    # -- decisions ---------------------------------------------------------------

    async def _attach(self, model: StoredModel, keep_alive: float, estimate: int) -> RunnerRef:
        """A loaded runner with a slot held for this request.

        A worker that dies (not on purpose) while the request waits for it to load or for
        a slot is replaced, and the request moves on to the replacement.
        """
        for attempt in range(MAX_REPLACEMENTS + 1):
            ref = await self._get_runner(model, keep_alive, estimate)
            try:
                await self._wait_ready(ref)
                if ref.slots.locked():
                    log.debug(
                        "request for %s waits for a free slot (%d pending)",
                        ref.name,
                        self._pending,
                    )
                await ref.slots.acquire()
            except BaseException:
                await self._release(ref, holds_slot=False)
                raise
            if not ref.worker.has_exited and not ref.stopping:
                return ref
            await self._release(ref, holds_slot=True)
            if attempt < MAX_REPLACEMENTS:
                log.info("worker of %s is gone; the request moves to a new one", ref.name)
        raise StatusError(f"model runner for {model.name.display} keeps exiting")

    async def _get_runner(self, model: StoredModel, keep_alive: float, estimate: int) -> RunnerRef:
        name = model.name.display
        async with self._changed:
            while True:
                if self._closing:
                    raise StatusError("the server is shutting down", 503)
                ref = self._runners.get(name)
                if ref is not None and ref.worker.has_exited and ref.ready and ref.ready.done():
                    self._forget(ref)  # died before its watcher ran: start a new one
                    continue
                if ref is not None and ref.model.digest != model.digest:
                    self._retire(ref, "model changed")  # re-created: load the new one
                    continue
                if ref is not None:
                    break
                plan = plan_group(self._settings, model, estimate)
                local = host_share(estimate, plan)  # what this machine holds of it
                if local > self._settings.memory_budget:
                    share = f" ({plan.size} hosts: about {_size(local)} each)" if plan else ""
                    raise StatusError(
                        f"model {name} needs about {_size(estimate)}{share} but the memory "
                        f"budget is {_size(self._settings.memory_budget)} (OLLMLX_MEMORY_BUDGET)"
                    )
                self._check_start_backoff(model)
                if self._fits(local):
                    ref = self._start(model, local, plan)
                    break
                victim = self._find_runner_to_unload()
                if victim is not None:
                    self._stop_later(victim, "evicted to make room")
                else:
                    log.info("waiting for a busy model to finish before loading %s", name)
                await self._changed.wait()
            ref.ref_count += 1
            # Ollama sets the session duration when a request is scheduled, not when it
            # ends: an unload asked for meanwhile is not undone by an older request.
            ref.keep_alive = keep_alive
            self._disarm(ref)
            return ref

    def _fits(self, estimate: int) -> bool:
        """Room for one more model, counting workers that are still stopping."""
        refs = [*self._runners.values(), *self._retired]
        used = sum(r.memory_bytes for r in refs) + self._reserved()
        return (
            len(refs) < self._settings.max_loaded_models
            and used + estimate <= self._settings.memory_budget
        )

    def _reserved(self) -> int:
        """Bytes held by reservations (work outside any worker)."""
        return sum(r.size for r in self._reservations)

    def _find_runner_to_unload(self) -> RunnerRef | None:
        """The idle runner to evict, least recently used first; None while all are busy."""
        idle = [r for r in self._runners.values() if r.ref_count == 0]
        return min(idle, key=lambda r: r.last_used) if idle else None

    def _start(self, model: StoredModel, estimate: int, plan: GroupPlan | None) -> RunnerRef:
        params = model.manifest.parameters
        kv_type = kv_cache_type(params, self._settings.kv_cache_type)
        # No disk tier for a group: each rank's cache holds its own shard of every entry;
        # no draft either (every rank would have to run it).
        disk = (
            None
            if plan is not None
            else folder_for(self._settings.models_dir, model.model_dir, model.adapter_dir, kv_type)
        )
        if plan is not None and model.draft_dir is not None:
            log.info("%s: served by a group, without its draft", model.name.display)
        spec = WorkerSpec(
            model.name.display,
            model.model_dir,
            model.adapter_dir,
            disk,
            plan,
            draft_dir=model.draft_dir if plan is None else None,
            draft_num_predict=draft_num_predict(params),
            kv_cache_type=kv_type,
        )
        worker = self._spawn(spec)
        ref = RunnerRef(model, worker, estimate, asyncio.Semaphore(self._settings.num_parallel))
        ref.ready = asyncio.ensure_future(self._load_worker(ref))
        self._runners[spec.name] = ref
        return ref

    def _check_start_backoff(self, model: StoredModel) -> None:
        """A model whose worker keeps failing is not respawned in a tight loop."""
        failure = self._failures.get(model.name.display)
        if failure is None or failure.digest != model.digest:
            return
        wait = failure.retry_at - time.monotonic()
        if wait > 0:
            raise StatusError(f"{failure.error} (next start attempt in {wait:.1f}s)")

    async def _load_worker(self, ref: RunnerRef) -> None:
        try:
            await ref.worker.start()
            await ref.worker.wait_until_ready()
        except BaseException as exc:
            await ref.worker.stop()
            async with self._changed:
                self._forget(ref)
                if not ref.stopping:  # an unload during the load is no failed start
                    self._record_failure(ref, exc)
                self._changed.notify_all()
            if ref.stopping:
                raise StatusError(f"the load of {ref.name} was cancelled", 503) from None
            raise
        self._failures.pop(ref.name, None)
        ref.watcher = asyncio.ensure_future(self._watch_exit(ref))

    def _record_failure(self, ref: RunnerRef, exc: BaseException) -> None:
        previous = self._failures.get(ref.name)
        count = previous.count + 1 if previous else 1
        backoff = min(2.0 ** (count - 1), MAX_START_BACKOFF)
        self._failures[ref.name] = StartFailure(
            ref.model.digest, count, time.monotonic() + backoff, str(exc)
        )
        log.warning("worker for %s failed to start (%d in a row): %s", ref.name, count, exc)

    async def _watch_exit(self, ref: RunnerRef) -> None:
        """Notice a worker that dies on its own (crash, OOM kill) and forget it."""
        code = await ref.worker.wait_exit()
        async with self._changed:
            if ref.stopping or ref.worker.stopping:
                return  # stopped by us
            tail = ref.worker.stderr_tail.splitlines()[-3:]
            log.warning(
                "worker pid=%s for %s exited unexpectedly with code %s%s",
                ref.worker.pid,
                ref.name,
                code,
                (": " + " | ".join(tail)) if tail else "",
            )
            self._forget(ref)
            self._retired.discard(ref)
            self._disarm(ref)
            self._changed.notify_all()

    async def _monitor_health(self) -> None:
        """Kill workers that stop answering (hung, SIGSTOPped) or whose engine died; the
        watcher then forgets them and the next request starts a replacement."""
        while True:
            await asyncio.sleep(self._settings.health_interval)
            try:
                await self._check_health()
            except Exception:  # the monitor must outlive any one bad round
                log.exception("health check round failed")

    async def _check_health(self) -> None:
        timeout = self._settings.health_timeout
        refs = [r for r in self._runners.values() if r.loaded and not r.worker.has_exited]
        problems = await asyncio.gather(*(r.worker.health_problem(timeout) for r in refs))
        async with self._changed:
            for ref, problem in zip(refs, problems, strict=True):
                # Only a runner still in use: never one that is being stopped meanwhile.
                if problem is None or ref.stopping or ref.worker.stopping:
                    continue
                if self._runners.get(ref.name) is not ref or ref.worker.has_exited:
                    continue
                log.warning(
                    "worker pid=%s for %s: %s; killing it", ref.worker.pid, ref.name, problem
                )
                ref.worker.kill()

    async def _wait_ready(self, ref: RunnerRef) -> None:
        assert ref.ready is not None
        # Shielded: a client that leaves does not abort a load that others may share.
        await asyncio.shield(ref.ready)

    async def _release(self, ref: RunnerRef, holds_slot: bool) -> None:
        if holds_slot:
            ref.slots.release()
        async with self._changed:
            ref.ref_count -= 1
            ref.last_used = time.monotonic()
            if ref.ref_count == 0:
                if ref.retiring:
                    self._stop_later(ref, "its last request ended")
                elif self._runners.get(ref.name) is ref:
                    self._arm(ref)
            self._changed.notify_all()

    def _arm(self, ref: RunnerRef) -> None:
        """Start the expiry timer: the model's last request has ended."""
        if ref.keep_alive < 0 or math.isinf(ref.keep_alive):
            ref.expires_at = math.inf
            return
        if ref.keep_alive == 0:
            self._stop_later(ref, "keep_alive 0")
            return
        ref.expires_at = time.time() + ref.keep_alive
        loop = asyncio.get_running_loop()
        ref.expiry = loop.call_later(
            ref.keep_alive, lambda: asyncio.ensure_future(self._expire(ref))
        )

    def _disarm(self, ref: RunnerRef) -> None:
        if ref.expiry is not None:
            ref.expiry.cancel()
            ref.expiry = None
        ref.expires_at = math.inf

    async def _expire(self, ref: RunnerRef) -> None:
        async with self._changed:
            if ref.ref_count == 0 and self._runners.get(ref.name) is ref:
                self._stop_later(ref, f"keep_alive {ref.keep_alive:g}s expired")

    def _retire(self, ref: RunnerRef, reason: str) -> None:
        """Under the lock: no new requests for `ref`; stop it now if it serves none."""
        self._forget(ref)
        ref.retiring = True
        self._retired.add(ref)
        self._disarm(ref)
        if ref.ref_count == 0:
            self._stop_later(ref, reason)
        else:
            log.info("%s goes when its %d request(s) end: %s", ref.name, ref.ref_count, reason)

    def _stop_later(self, ref: RunnerRef, reason: str) -> None:
        """Under the lock: decide the stop; the process is stopped outside of it."""
        if ref.stopping:
            return
        log.info("unloading %s: %s", ref.name, reason)
        ref.stopping = True
        self._forget(ref)
        self._retired.add(ref)
        self._disarm(ref)
        task = asyncio.ensure_future(self._stop(ref))
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def _stop(self, ref: RunnerRef) -> None:
        try:
            await ref.worker.stop()
        finally:
            async with self._changed:
                self._retired.discard(ref)
                self._changed.notify_all()

    def _forget(self, ref: RunnerRef) -> None:
        if self._runners.get(ref.name) is ref:
            del self._runners[ref.name]


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
