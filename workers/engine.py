"""The engine thread: the only thread of a worker that touches MLX.

Metal streams are thread-local (mlx-notes), so loading, prefill and decoding all run
here. The HTTP side only queues jobs and receives events through each job's `emit`.

Failures are contained: a request's own failure is that request's error event (see
batching.py); only an exception that escapes the loop itself ends the engine, and then
every request in flight and every later one gets an error at once, and /health says
"error", so the supervisor replaces the worker.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollmlx.architectures import ENCODER_TYPES, runs_with_mlx_vlm
from ollmlx.errors import StatusError
from ollmlx.protocol import CompletionRequest, EmbedRequest, EmbedResponse, ErrorEvent, WorkerEvent

from .driver import SingleProcess
from .faults import inject
from .memory import FreeMemory, kv_bytes_per_token, mlx_cache_limit
from .prompts import build_prompt

log = logging.getLogger("ollmlx.worker")

STOPPING = "the model runner is stopping"
# Seconds idle before MLX's freed buffers go back. A request sooner reuses them (an
# agent's next call, a benchmark's): emptied at every idle moment, each request's first
# step allocated afresh (0 to 0.8 ms of warm TTFT on the tiny model, issue 16's note).
CLEAR_CACHE_AFTER = 2.0


@dataclass
class Job:
    request: CompletionRequest
    emit: Callable[[WorkerEvent], None]  # thread-safe: hands an event to the HTTP side
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt: list[int] | None = None  # text models: built before the job is queued
    ended: bool = False  # its final or error event was emitted

    def fail(self, message: str, status: int = 500) -> None:
        """End with an error line, unless it already ended (exactly one last event)."""
        if not self.ended:
            self.ended = True
            self.emit(ErrorEvent(message, status))


@dataclass
class EmbedJob:
    request: EmbedRequest
    reply: Callable[[EmbedResponse | ErrorEvent], None]  # thread-safe, called once
    cancelled: threading.Event = field(default_factory=threading.Event)


def _refuse(job: Job | EmbedJob, message: str, status: int) -> None:
    if isinstance(job, Job):
        job.fail(message, status)
    else:
        job.reply(ErrorEvent(message, status))


class Engine:
    def __init__(
        self,
        model_dir: Path,
        adapter_dir: Path | None = None,
        memory_limit: int = 0,
        prompt_cache_bytes: int = 0,
        prompt_cache_disk: tuple[Path, int] | None = None,
        driver: Any = None,
        draft_dir: Path | None = None,
        draft_num_predict: int = 4,
        kv_cache_type: str = "f16",
    ) -> None:
        self.model_dir = model_dir
        self.prompt_cache_disk = prompt_cache_disk  # (folder, bytes): the disk tier
        self.driver = driver or SingleProcess()  # loads and steps: alone, or with a group
        self.adapter_dir = adapter_dir
        self.draft_dir = draft_dir  # speculative decoding (speculative.py)
        self.draft_num_predict = draft_num_predict
        self.draft: Any = None
        self.kv_cache_type = kv_cache_type  # f16, q8_0 or q4_0 (kvquant.py)
        self._kv = (0, 0)  # (bits, group size) of a quantized KV cache
        self.memory_limit = memory_limit  # bytes this worker may use; 0: what the OS has free
        self._kv_bytes_per_token = 0
        self._os_free = FreeMemory()
        self.prompt_cache_bytes = prompt_cache_bytes
        self.status = "loading"  # -> "ok" | "error"; "stopping" after close()
        self.error: str | None = None
        self.memory_bytes = 0
        self.context_length = 0
        self.vocab_size = 0
        self._jobs: queue.Queue[Job | EmbedJob | None] = queue.Queue()
        self._taken: list[Job | EmbedJob | None] = []  # off the queue, not yet admitted
        # Guards the status change and the queue together: a job is either queued while
        # the engine still takes jobs, or refused; never queued behind a dead engine.
        self._gate = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self.model: Any = None
        self.tokenizer: Any = None
        self._batch: Any = None  # batching.BatchRunner or vision.VisionRunner
        self._embedder: Any = None  # embedding.Embedder: at load (encoders) or first use
        self.generative = True  # False for encoder-only (embedding) models
        self.vision = False  # True: mlx-vlm model and processor, see vision.py

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job | EmbedJob) -> None:
        with self._gate:
            if self.status == "ok":
                self._jobs.put(job)
                return
            message, status = self.error or STOPPING, 503
        _refuse(job, message, status)

    def close(self) -> None:
        """Stop taking jobs; the thread ends what runs with an error line and returns."""
        with self._gate:
            if self.status in ("ok", "loading"):
                self.status = "stopping"
            self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def prepare(self, request: CompletionRequest) -> list[int]:
        """A text model's prompt tokens; runs on the HTTP side's thread pool (no MLX), so
        a long chat's template and tokenizer never stall the streams being decoded."""
        return build_prompt(self.tokenizer, request, self.vocab_size)

    def _run(self) -> None:
        try:
            self._load()
        except Exception as exc:  # the supervisor reads this through /health
            log.exception("loading %s failed", self.model_dir)
            self.error = f"{type(exc).__name__}: {exc}"
            self.status = "error"
            _announce("error")
            return
        with self._gate:
            if self.status == "loading":
                self.status = "ok"
        _announce(self.status)
        try:
            self._serve()
        except BaseException as exc:
            log.exception("the engine thread failed; the worker must be replaced")
            self._die(f"model runner failed: {type(exc).__name__}: {exc}")
            return
        self._die(STOPPING, status="stopping")
        flush = getattr(self._batch, "flush_to_disk", None)
        if flush is not None:
            try:
                flush()  # long prefixes outlive this worker
            except Exception:
                log.exception("writing the prompt cache to disk failed")

    def _serve(self) -> None:
        if self.vision:
            from .vision import VisionRunner

            self._batch = VisionRunner(self.model, self.tokenizer)
        elif self.generative:
            disk = None
            if self.prompt_cache_disk is not None and self.prompt_cache_bytes > 0:
                from .disk_cache import DiskPromptCache

                disk = DiskPromptCache(*self.prompt_cache_disk)
            self._batch = self.driver.runner(
                self.model,
                self.tokenizer,
                self.prompt_cache_bytes,
                disk=disk,
                draft=self.draft,
                num_draft=self.draft_num_predict,
                kv_bits=self._kv[0],
                kv_group=self._kv[1],
            )
        idle_since: float | None = None  # when the last job or sequence ended
        while True:
            # Idle: wait for work. Busy: take what has arrived and keep decoding.
            busy = self._batch is not None and self._batch.busy
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            self._taken = self._take_jobs(block=not busy, timeout=self._idle_wait(idle_since))
            if self._taken:
                idle_since = None
            while self._taken:
                job = self._taken[0]  # still listed while it runs: _die answers it
                if job is None:
                    self.driver.close()
                    return
                if isinstance(job, EmbedJob):
                    self._embed(job)  # between decode steps: streams pause for one batch
                else:
                    inject("engine", job.request)
                    self._admit(job)
                self._taken.pop(0)
            if self._batch is not None:
                self._batch.step()

    def _idle_wait(self, idle_since: float | None) -> float | None:
        """How long an idle engine waits for a job before MLX's freed buffers go back;
        once that is past, they go, and it waits without a limit (None)."""
        if idle_since is None:
            return None
        left = idle_since + CLEAR_CACHE_AFTER - time.monotonic()
        if left > 0:
            return left
        if self._jobs.empty():
            self._clear_cache()
        return None

    def _clear_cache(self) -> None:
        import mlx.core as mx

        if mx.get_cache_memory():
            mx.clear_cache()

    def memory_now(self) -> tuple[int, int, int]:
        """(active, cached, peak) bytes MLX holds: /api/ps reports active + cached."""
        if self.status != "ok":
            return self.memory_bytes, 0, self.memory_bytes
        import mlx.core as mx

        return int(mx.get_active_memory()), int(mx.get_cache_memory()), int(mx.get_peak_memory())

    def _die(self, message: str, status: str = "error") -> None:
        """End every request in flight and every queued one with an error line."""
        with self._gate:
            self.status = status
            self.error = message if status == "error" else None
            pending = []
            while True:
                try:
                    pending.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
        code = 503 if status == "stopping" else 500
        if self._batch is not None:
            for seq in self._batch.sequences():
                seq.fail(message, code)
        for job in [*self._taken, *pending]:
            if job is not None and not job.cancelled.is_set():
                _refuse(job, message, code)

    def _take_jobs(self, block: bool, timeout: float | None) -> list[Job | EmbedJob | None]:
        """What is queued; blocking, the first job within `timeout` (None: no limit but the
        driver's own, e.g. a group's heartbeat)."""
        limits = [t for t in (timeout, self.driver.idle_timeout) if t is not None]
        jobs: list[Job | EmbedJob | None] = []
        try:
            jobs.append(self._jobs.get(block=block, timeout=min(limits) if limits else None))
            while True:
                jobs.append(self._jobs.get_nowait())
        except queue.Empty:
            return jobs

    def _admit(self, job: Job) -> None:
        """Join the batch; a request that cannot run is answered at once, alone."""
        if job.cancelled.is_set():
            return
        if not self.generative:
            job.fail("this model does not support generate", 400)
            return
        try:
            options = job.request.sampling
            if self.vision:  # the processor tokenizes text and images together
                prompt = self._batch.prepare(job.request)
            else:
                prompt = job.prompt if job.prompt is not None else self.prepare(job.request)
            room = options.num_ctx - len(prompt)
            max_tokens = room if options.num_predict < 0 else min(options.num_predict, room)
            self._check_memory(len(prompt) + max(max_tokens, 0))
            self._batch.add(job, prompt, max_tokens)
        except StatusError as exc:
            job.fail(exc.message, exc.status)
        except Exception as exc:
            log.exception("request failed")
            job.fail(f"{type(exc).__name__}: {exc}")

    def _load(self) -> None:
        started = time.perf_counter()
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from . import ollama_tensors
        from .embedding import Embedder

        config = json.loads((self.model_dir / "config.json").read_text())
        adapter = str(self.adapter_dir) if self.adapter_dir else None
        if runs_with_mlx_vlm(config):
            from . import vision

            self.vision = True
            self.model, self.tokenizer = vision.load(self.model_dir, self.adapter_dir)
        elif config.get("model_type") in ENCODER_TYPES:
            self.generative = False
            self._embedder = Embedder.for_encoder(self.model_dir, config)
            self.model = self._embedder.forward
        elif ollama_tensors.is_ollama(self.model_dir):  # Ollama's quantized tensor blobs
            if not isinstance(self.driver, SingleProcess):  # its ranks would load shards
                raise RuntimeError(
                    "a model in Ollama's quantized tensor format cannot be served by a group"
                )
            self.model, self.tokenizer = ollama_tensors.load(self.model_dir, adapter)
        else:
            self.model, self.tokenizer = self.driver.load(self.model_dir, adapter)
            self._load_extras()
        models = [self.model] if self.draft is None else [self.model, self.draft]
        weights = sum(v.nbytes for m in models for _, v in tree_flatten(m.parameters()))
        self.memory_bytes = max(int(mx.get_active_memory()), int(weights))
        # MLX keeps freed buffers for reuse; on a Mac that is unified memory taken from
        # every other app and model. Bound it; it is emptied whenever the worker idles.
        mx.set_cache_limit(mlx_cache_limit(int(weights)))
        args = getattr(self.model, "args", None)
        self.context_length = int(getattr(args, "max_position_embeddings", 0) or 0)
        self.vocab_size = int(getattr(args, "vocab_size", 0) or 0)
        if self.vision:
            self.context_length, self._kv_bytes_per_token = vision.sizes(self.model)
        elif self.generative:
            per_rank = kv_bytes_per_token(self.model, *self._kv) // self.driver.kv_divisor
            self._kv_bytes_per_token = per_rank
            if self.draft is not None:
                self._kv_bytes_per_token += kv_bytes_per_token(self.draft)
        else:
            self.context_length = self._embedder.max_tokens
        log.info(
            "loaded %s in %.2fs (%d MiB)",
            self.model_dir.name,
            time.perf_counter() - started,
            self.memory_bytes >> 20,
        )

    def _load_extras(self) -> None:
        """A text model's draft (DRAFT) and KV cache kind (kv_cache_type)."""
        from .kvquant import kv_settings
        from .speculative import load_draft

        self._kv = kv_settings(self.model, self.kv_cache_type)
        if self.draft_dir is not None:
            self.draft = load_draft(self.draft_dir, self.model, self.tokenizer)

    def _embed(self, job: EmbedJob) -> None:
        """One embedding request, run to the end here (a few batched forward passes)."""
        from .embedding import Embedder

        if job.cancelled.is_set():
            return
        try:
            if self._embedder is None:
                self._embedder = Embedder.for_decoder(
                    self.model_dir, self.model, self.tokenizer, self.context_length
                )
            job.reply(self._embedder.embed(job.request))
        except StatusError as exc:
            job.reply(ErrorEvent(exc.message, exc.status))
        except Exception as exc:
            log.exception("embedding failed")
            job.reply(ErrorEvent(f"{type(exc).__name__}: {exc}", 500))

    def _check_memory(self, tokens: int) -> None:
        """Refuse a request whose KV cache cannot fit, instead of being killed for it."""
        needed = self._kv_bytes_per_token * tokens
        free = self._os_free.for_request(needed)
        if self.memory_limit:
            free = min(free, self.memory_limit - self.memory_bytes)
        if needed > free:
            raise StatusError(
                f"out of memory: this request needs about {needed >> 20} MiB for {tokens} "
                f"tokens of context but only {max(free, 0) >> 20} MiB is free; "
                "lower num_ctx or num_predict",
                status=500,
            )


def _announce(status: str) -> None:
    """One stdout line when loading ends: the supervisor polls /health at once."""
    print(json.dumps({"status": status}), flush=True)
