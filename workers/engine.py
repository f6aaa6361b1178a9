"""The engine thread: the only thread of a worker that touches MLX.

Metal streams are thread-local (mlx-notes), so loading, prefill and decoding all run
here. The HTTP side only queues jobs and receives events through each job's `emit`.
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

from .prompts import build_prompt

log = logging.getLogger("ollmlx.worker")


@dataclass
class Job:
    request: CompletionRequest
    emit: Callable[[WorkerEvent], None]  # thread-safe: hands an event to the HTTP side
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class EmbedJob:
    request: EmbedRequest
    reply: Callable[[EmbedResponse | ErrorEvent], None]  # thread-safe, called once
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    def __init__(
        self,
        model_dir: Path,
        adapter_dir: Path | None = None,
        memory_limit: int = 0,
        prompt_cache_bytes: int = 0,
    ) -> None:
        self.model_dir = model_dir
        self.adapter_dir = adapter_dir
        self.memory_limit = memory_limit  # bytes this worker may use; 0: what the OS has free
        self._kv_bytes_per_token = 0
        self.prompt_cache_bytes = prompt_cache_bytes
        self.status = "loading"
        self.error: str | None = None
        self.memory_bytes = 0
        self.context_length = 0
        self._jobs: queue.Queue[Job | EmbedJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self.model: Any = None
        self.tokenizer: Any = None
        self._batch: Any = None  # batching.BatchRunner, made on the engine thread
        self._embedder: Any = None  # embedding.Embedder: at load (encoders) or first use
        self.generative = True  # False for encoder-only (embedding) models
        self.vision = False  # True: mlx-vlm model and processor, see vision.py

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job | EmbedJob) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        try:
            self._load()
        except Exception as exc:  # the supervisor reads this through /health
            log.exception("loading %s failed", self.model_dir)
            self.error = f"{type(exc).__name__}: {exc}"
            self.status = "error"
            _announce("error")
            return
        _announce("ok")
        from .batching import BatchRunner

        if self.vision:
            from .vision import VisionRunner

            self._batch = VisionRunner(self.model, self.tokenizer)
        elif self.generative:
            self._batch = BatchRunner(self.model, self.tokenizer, self.prompt_cache_bytes)
        while True:
            # Idle: wait for work. Busy: take what has arrived and keep decoding.
            busy = self._batch is not None and self._batch.busy
            for job in self._take_jobs(block=not busy):
                if job is None:
                    return
                if isinstance(job, EmbedJob):
                    self._embed(job)  # between decode steps: streams pause for one batch
                else:
                    self._admit(job)
            if self._batch is not None:
                self._batch.step()

    def _take_jobs(self, block: bool) -> list[Job | EmbedJob | None]:
        jobs: list[Job | EmbedJob | None] = []
        try:
            jobs.append(self._jobs.get(block=block))
            while True:
                jobs.append(self._jobs.get_nowait())
        except queue.Empty:
            return jobs

    def _admit(self, job: Job) -> None:
        """Build the prompt and join the batch; a bad request is answered at once."""
        if job.cancelled.is_set():
            return
        if not self.generative:
            job.emit(ErrorEvent("this model does not support generate", 400))
            return
        try:
            options = job.request.sampling
            if self.vision:  # the processor tokenizes text and images together
                prompt = self._batch.prepare(job.request)
            else:
                prompt = build_prompt(self.tokenizer, job.request)
            room = options.num_ctx - len(prompt)
            max_tokens = room if options.num_predict < 0 else min(options.num_predict, room)
            self._check_memory(len(prompt) + max(max_tokens, 0))
            self._batch.add(job, prompt, max_tokens)
        except StatusError as exc:
            job.emit(ErrorEvent(str(exc), exc.status))
        except Exception as exc:
            log.exception("request failed")
            job.emit(ErrorEvent(f"{type(exc).__name__}: {exc}", 500))

    def _load(self) -> None:
        started = time.perf_counter()
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm import load

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
        else:
            self.model, self.tokenizer = load(str(self.model_dir), adapter_path=adapter)
        weights = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        self.memory_bytes = max(int(mx.get_active_memory()), int(weights))
        args = getattr(self.model, "args", None)
        self.context_length = int(getattr(args, "max_position_embeddings", 0) or 0)
        if self.vision:
            self.context_length, self._kv_bytes_per_token = vision.sizes(self.model)
        elif self.generative:
            self._kv_bytes_per_token = _kv_bytes_per_token(self.model)
        else:
            self.context_length = self._embedder.max_tokens
        self.status = "ok"
        log.info(
            "loaded %s in %.2fs (%d MiB)",
            self.model_dir.name,
            time.perf_counter() - started,
            self.memory_bytes >> 20,
        )

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
            job.reply(ErrorEvent(str(exc), exc.status))
        except Exception as exc:
            log.exception("embedding failed")
            job.reply(ErrorEvent(f"{type(exc).__name__}: {exc}", 500))

    def _check_memory(self, tokens: int) -> None:
        """Refuse a request whose KV cache cannot fit, instead of being killed for it."""
        import psutil

        needed = self._kv_bytes_per_token * tokens
        free = psutil.virtual_memory().available
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


def _kv_bytes_per_token(model: Any) -> int:
    """KV cache bytes that one token of context costs (keys and values, every layer)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    args = getattr(model, "args", None)
    layers = len(getattr(model, "layers", []))
    heads = int(getattr(args, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(args, "num_key_value_heads", 0) or heads)
    hidden = int(getattr(args, "hidden_size", 0) or 0)
    head_dim = int(getattr(args, "head_dim", 0) or (hidden // heads if heads else 0))
    # The cache takes the activations' dtype: that of the float parameters (quantized
    # weights are integers; their scales are floats).
    floats = [
        v.dtype.size
        for _, v in tree_flatten(model.parameters())
        if mx.issubdtype(v.dtype, mx.floating)
    ]
    return 2 * layers * kv_heads * head_dim * (floats[0] if floats else 2)
