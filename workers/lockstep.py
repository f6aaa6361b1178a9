"""Lockstep: every rank of a group runs the same batch, step for step.

Rank 0 owns the request queue. Before it touches its batch it broadcasts what it is about
to do: admit a request (its prompt tokens and its whole resolved request, a seed included),
cancel what clients left, take one decode step, or quit. Every rank then does exactly that
to a `BatchRunner` of its own: samplers, logits processors and llguidance grammars, stop
strings, tool and thinking parsers and the prompt cache all run on every rank, on the same
inputs, so they make the same decisions (which sequences end, what the cache keeps).

Sampling agrees because it is seeded per request: a request without a seed gets one from
rank 0, so every rank draws from the same key over the same logits (which the model's
collectives make bitwise equal on every rank); greedy is argmax. A running digest of each
rank's events (token ids, ends, errors) rides in every header, so a rank that ever
disagrees takes the group down at once instead of drifting.

One message, in MLX collectives only (`all_sum` as a broadcast: the other ranks add zeros):
  header   int64[2 + N]: payload bytes, flags, then each rank's digest in its own slot
  payload  uint8[bytes]: msgpack of `Step`; absent for a bare decode step (the common case)
Both run on mlx-lm's generation stream, the one the model's own collectives run on: one
FIFO, so every rank issues its collectives in the same order.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from ollmlx.protocol import CompletionRequest, DoneEvent, ErrorEvent, TokenEvent, WorkerEvent

from .batching import BatchRunner

log = logging.getLogger("ollmlx.worker")

ADVANCE, QUIT = 1, 2  # header flags: take one decode step; leave
HEARTBEAT = 1.0  # seconds: an idle rank 0 steps this often, so the others know it lives
_DIGEST_MOD = (1 << 61) - 1  # a prime; keeps every slot of the header's sum exact


class GroupError(RuntimeError):
    """The group cannot go on (a rank is gone, stalled or disagrees): every rank stops."""


class Insert(msgspec.Struct):
    id: int
    request: CompletionRequest
    prompt: list[int]
    max_tokens: int


class Step(msgspec.Struct, omit_defaults=True):
    inserts: list[Insert] = msgspec.field(default_factory=list)
    cancel: list[int] = msgspec.field(default_factory=list)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Step).decode


def byte_array(data: bytes, size: int = 0) -> Any:
    """`data` as an MLX uint8 array; empty `data`: `size` zeros (what the others add)."""
    import mlx.core as mx

    source: Any = memoryview(data)
    return mx.array(source, dtype=mx.uint8) if data else mx.zeros((size,), dtype=mx.uint8)


def array_bytes(array: Any) -> bytes:
    return bytes(memoryview(array))


def ints(array: Any) -> list[int]:
    values: Any = array.tolist()
    return [int(v) for v in values]


def _clear_cache() -> None:
    import mlx.core as mx

    if mx.get_cache_memory():
        mx.clear_cache()


class Digest:
    """A running hash of the events one rank's batch produced, in order."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, ident: int, event: WorkerEvent) -> None:
        parts: tuple[int, ...]
        if isinstance(event, TokenEvent):
            parts = (1, event.token)
        elif isinstance(event, DoneEvent):
            parts = (2, event.eval_count, zlib.crc32(event.done_reason.encode()))
        else:
            parts = (3, event.status)
        for part in (ident, *parts):
            self.value = (self.value * 1_000_003 + part + 7) % _DIGEST_MOD


class Channel:
    """Rank 0's messages to every rank, and what the ranks agree on, over `group`."""

    def __init__(self, group: Any, digest: Digest) -> None:
        self.group = group
        self.rank = group.rank()
        self.size = group.size()
        self.digest = digest

    def _all_sum(self, values: Any) -> Any:
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        try:
            with mx.stream(generation_stream):
                out = mx.distributed.all_sum(values, group=self.group)
                mx.eval(out)
        except RuntimeError as exc:  # the ring backend: "connection to a peer was lost"
            raise GroupError(f"the distributed group lost a rank ({exc})") from None
        return out

    def _header(self, length: int, flags: int) -> tuple[int, int]:
        import mlx.core as mx

        header = [0] * (2 + self.size)
        if self.rank == 0:
            header[0], header[1] = length, flags
        header[2 + self.rank] = self.digest.value
        total = ints(self._all_sum(mx.array(header, dtype=mx.int64)))
        digests = total[2:]
        if any(d != digests[0] for d in digests):
            wrong = [r for r, d in enumerate(digests) if d != digests[0]]
            raise GroupError(
                f"rank(s) {', '.join(map(str, wrong))} computed other tokens than rank 0: "
                "the group's ranks disagree"
            )
        return int(total[0]), int(total[1])

    def send(self, step: Step | None, flags: int = 0) -> None:
        """Rank 0: broadcast one message."""

        payload = _encode(step) if step is not None and (step.inserts or step.cancel) else b""
        self._header(len(payload), flags)
        if payload:
            self._all_sum(byte_array(payload))

    def receive(self) -> tuple[int, Step | None]:
        """Other ranks: the next message of rank 0 (flags, step)."""

        length, flags = self._header(0, 0)
        if not length:
            return flags, None
        return flags, _decode(array_bytes(self._all_sum(byte_array(b"", length))))

    def agree_min(self, values: list[int]) -> list[int]:
        """Every rank's `values`, each the least over all ranks."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        try:
            with mx.stream(generation_stream):
                out = mx.distributed.all_min(mx.array(values, dtype=mx.int64), group=self.group)
                mx.eval(out)
        except RuntimeError as exc:
            raise GroupError(f"the distributed group lost a rank ({exc})") from None
        return ints(out)


class Mirrored:
    """A request as one rank's batch sees it: a `cancelled` flag set only in lockstep (a
    client that leaves between two steps must not change what rank 0 alone does), and
    every event counted into the digest before it goes to the client (rank 0: `real`,
    the engine's job) or nowhere (the other ranks)."""

    def __init__(self, ident: int, request: CompletionRequest, digest: Digest, real: Any) -> None:
        self.id = ident
        self.request = request
        self.cancelled = threading.Event()
        self._digest = digest
        self._real = real
        self._ended = False

    @property
    def real(self) -> Any:
        return self._real

    @property
    def ended(self) -> bool:
        return self._ended

    @ended.setter
    def ended(self, value: bool) -> None:
        self._ended = value
        if self._real is not None:
            self._real.ended = value

    def emit(self, event: WorkerEvent) -> None:
        self._digest.add(self.id, event)
        if self._real is not None:
            self._real.emit(event)

    def fail(self, message: str, status: int = 500) -> None:
        if not self._ended:
            self.ended = True
            self.emit(ErrorEvent(message, status))


class GroupBatchRunner(BatchRunner):
    """A BatchRunner whose prompt-cache reuse the ranks agree on.

    Each rank's cache holds its own shard of every entry, so byte-bounded eviction may
    keep different prefixes on different ranks (pipeline stages of unequal size): every
    rank takes the longest prefix that all ranks still have.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        cache_bytes: int,
        channel: Channel,
        kv_bits: int = 0,  # a quantized KV cache: the same on every rank
        kv_group: int = 64,
    ) -> None:
        super().__init__(model, tokenizer, cache_bytes, kv_bits=kv_bits, kv_group=kv_group)
        self._channel = channel

    def fail_all(self, message: str, status: int = 500) -> None:
        if message.startswith("RuntimeError: [ring]") or "[jaccl]" in message:
            message = f"the distributed group lost a rank ({message})"
        super().fail_all(message, status)

    def _cached_prefix(self, prompt: list[int]) -> tuple[Any, list[int]]:
        cache, rest = super()._cached_prefix(prompt)
        if self._cache is None:  # off on every rank (the same setting): nothing to agree on
            return cache, rest
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        reused = len(prompt) - len(rest)
        trimmable = cache is None or can_trim_prompt_cache(cache)
        low, minus_high, all_trim = self._channel.agree_min([reused, -reused, int(trimmable)])
        agreed = low if (low == -minus_high or all_trim) else 0
        if agreed == reused:
            return cache, rest
        if agreed == 0:
            return None, prompt
        trim_prompt_cache(cache, reused - agreed)
        return cache, prompt[agreed:]


class StepWatch:
    """Notices a step that never ends. A rank that hangs (stopped, its cable pulled) blocks
    every other rank inside a collective for good, and nothing else would tell."""

    def __init__(self, timeout: float, on_stall: Callable[[str], None]) -> None:
        self._timeout = timeout
        self._on_stall = on_stall
        self._since: float | None = None
        threading.Thread(target=self._watch, name="group-watch", daemon=True).start()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self._timeout / 4))
            since = self._since
            if since is not None and time.monotonic() - since > self._timeout:
                self._on_stall(
                    f"the distributed group stalled: a step took more than {self._timeout:g}s "
                    "(a rank is hung or its link is down)"
                )
                return


class Leader:
    """Rank 0's batch, the one its engine steps: every call is broadcast first."""

    def __init__(self, channel: Channel, batch: GroupBatchRunner, timeout: float) -> None:
        self._channel = channel
        self._batch = batch
        self._jobs: dict[int, Mirrored] = {}
        self._ids = itertools.count(1)
        self._watch = StepWatch(timeout, self._stalled)

    @property
    def busy(self) -> bool:
        return self._batch.busy

    def sequences(self) -> list[Any]:
        return self._batch.sequences()

    def add(self, job: Any, prompt: list[int], max_tokens: int) -> None:
        sampling = job.request.sampling
        if sampling.temperature > 0 and sampling.seed is None:
            sampling.seed = secrets.randbits(63)  # one key, drawn from on every rank
        ident = next(self._ids)
        with self._watch.step():
            self._channel.send(Step(inserts=[Insert(ident, job.request, prompt, max_tokens)]))
            mirrored = Mirrored(ident, job.request, self._channel.digest, job)
            # A refusal here (a bad grammar) is the engine's to answer; every rank refused
            # the same request alike.
            self._batch.add(mirrored, prompt, max_tokens)
            if not mirrored.ended:
                self._jobs[ident] = mirrored

    def step(self) -> None:
        cancel = [
            i
            for i, m in self._jobs.items()
            if m.real.cancelled.is_set() and not m.cancelled.is_set()
        ]
        with self._watch.step():
            self._channel.send(Step(cancel=cancel), ADVANCE)
            for ident in cancel:
                self._jobs[ident].cancelled.set()
            self._batch.step()
        self._jobs = {
            i: m for i, m in self._jobs.items() if not m.ended and not m.cancelled.is_set()
        }

    def quit(self) -> None:
        """Tell every rank to leave (the engine stops); a broken group is left as it is."""
        try:
            self._channel.send(None, QUIT)
        except GroupError as exc:
            log.warning("could not tell the group to stop: %s", exc)

    def _stalled(self, message: str) -> None:
        """On the watch thread, while the engine thread is stuck in a collective: answer
        the running requests, then leave, so mlx.launch stops every other rank."""
        log.error("%s; stopping the group", message)
        for mirrored in list(self._jobs.values()):
            mirrored.fail(message)
        time.sleep(1.0)  # the HTTP side writes those error lines
        os._exit(1)


class Follower:
    """A rank other than 0: does what rank 0's messages say, until it says quit."""

    def __init__(self, channel: Channel, batch: GroupBatchRunner, timeout: float) -> None:
        self._channel = channel
        self._batch = batch
        self._jobs: dict[int, Mirrored] = {}
        self._timeout = timeout

    def run(self) -> None:
        watch = StepWatch(self._timeout, self._stalled)
        while True:
            with watch.step():
                flags, step = self._channel.receive()
                if flags & QUIT:
                    log.info("rank 0 says the group stops")
                    return
                for insert in step.inserts if step else ():
                    self._insert(insert)
                for ident in step.cancel if step else ():
                    if ident in self._jobs:
                        self._jobs[ident].cancelled.set()
                if flags & ADVANCE:
                    self._batch.step()
            if not self._batch.busy:
                _clear_cache()  # idle, as rank 0 does: give MLX's freed buffers back
            self._jobs = {
                i: m for i, m in self._jobs.items() if not m.ended and not m.cancelled.is_set()
            }

    def _insert(self, insert: Insert) -> None:
        mirrored = Mirrored(insert.id, insert.request, self._channel.digest, None)
        try:
            self._batch.add(mirrored, insert.prompt, insert.max_tokens)
        except GroupError:
            raise
        except Exception as exc:  # rank 0 failed the same request the same way
            log.debug("request %d refused here as on rank 0: %s", insert.id, exc)
            return
        if not mirrored.ended:
            self._jobs[insert.id] = mirrored

    def _stalled(self, message: str) -> None:
        log.error("%s; leaving the group", message)
        os._exit(1)
