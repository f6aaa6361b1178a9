"""The engine thread: the only thread of a worker that touches MLX.

Metal streams are thread-local (mlx-notes), so loading, prefill and decoding all run
here. The HTTP side only queues jobs and receives events through each job's `emit`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollmlx.protocol import CompletionRequest, DoneEvent, ErrorEvent, TokenEvent, WorkerEvent

from .prompts import PromptError, build_prompt
from .sampling import StopMatcher, build_logits_processors, build_sampler

log = logging.getLogger("ollmlx.worker")


@dataclass
class Job:
    request: CompletionRequest
    emit: Callable[[WorkerEvent], None]  # thread-safe: hands an event to the HTTP side
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    def __init__(
        self, model_dir: Path, adapter_dir: Path | None = None, memory_limit: int = 0
    ) -> None:
        self.model_dir = model_dir
        self.adapter_dir = adapter_dir
        self.memory_limit = memory_limit  # bytes this worker may use; 0: what the OS has free
        self._kv_bytes_per_token = 0
        self.status = "loading"
        self.error: str | None = None
        self.memory_bytes = 0
        self.context_length = 0
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self.model: Any = None
        self.tokenizer: Any = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
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
            return
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            try:
                self._generate(job)
            except PromptError as exc:
                job.emit(ErrorEvent(str(exc), exc.status))
            except Exception as exc:  # e.g. out of memory: answer it, keep serving
                log.exception("generation failed")
                job.emit(ErrorEvent(f"{type(exc).__name__}: {exc}", 500))

    def _load(self) -> None:
        started = time.perf_counter()
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm import load

        adapter = str(self.adapter_dir) if self.adapter_dir else None
        self.model, self.tokenizer = load(str(self.model_dir), adapter_path=adapter)
        weights = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        self.memory_bytes = max(int(mx.get_active_memory()), int(weights))
        args = getattr(self.model, "args", None)
        self.context_length = int(getattr(args, "max_position_embeddings", 0) or 0)
        self._kv_bytes_per_token = _kv_bytes_per_token(self.model)
        self.status = "ok"
        log.info(
            "loaded %s in %.2fs (%d MiB)",
            self.model_dir.name,
            time.perf_counter() - started,
            self.memory_bytes >> 20,
        )

    def _check_memory(self, tokens: int) -> None:
        """Refuse a request whose KV cache cannot fit, instead of being killed for it."""
        import psutil

        needed = self._kv_bytes_per_token * tokens
        free = psutil.virtual_memory().available
        if self.memory_limit:
            free = min(free, self.memory_limit - self.memory_bytes)
        if needed > free:
            raise PromptError(
                f"out of memory: this request needs about {needed >> 20} MiB for {tokens} "
                f"tokens of context but only {max(free, 0) >> 20} MiB is free; "
                "lower num_ctx or num_predict",
                status=500,
            )

    def _generate(self, job: Job) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        request, options = job.request, job.request.sampling
        started = time.perf_counter_ns()
        prompt = build_prompt(self.tokenizer, request)
        room = options.num_ctx - len(prompt)
        max_tokens = room if options.num_predict < 0 else min(options.num_predict, room)
        self._check_memory(len(prompt) + max(max_tokens, 0))
        # An unseeded request must not inherit the sequence of an earlier seeded one.
        mx.random.seed(
            options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "little")
        )
        eos = set(self.tokenizer.eos_token_ids)
        detokenizer = self.tokenizer.detokenizer
        stops = StopMatcher(options.stop)
        generated: list[int] = []
        first_token_at = started
        reason = "length"
        steps = generate_step(
            mx.array(prompt),
            self.model,
            max_tokens=max_tokens,
            sampler=build_sampler(options),
            logits_processors=build_logits_processors(options),
        )
        for token, _logprobs in steps if max_tokens > 0 else ():
            if not generated:
                first_token_at = time.perf_counter_ns()
            if job.cancelled.is_set():
                # The client went away: stop within one decode step.
                log.info("request cancelled by the client after %d tokens", len(generated))
                return
            if token in eos:
                reason = "stop"
                break
            generated.append(token)
            detokenizer.add_token(token)
            text = stops.feed(detokenizer.last_segment)
            job.emit(TokenEvent(text=text, token=token))
            if stops.stopped:
                reason = "stop"
                break
        detokenizer.finalize()
        tail = stops.feed(detokenizer.last_segment) + stops.flush()
        if tail:
            job.emit(TokenEvent(text=tail, token=-1))
        finished = time.perf_counter_ns()
        if not generated:
            first_token_at = finished
        job.emit(
            DoneEvent(
                done_reason=reason,
                prompt_eval_count=len(prompt),
                prompt_eval_duration=first_token_at - started,
                eval_count=len(generated),
                eval_duration=finished - first_token_at,
                context=[*prompt, *generated] if request.return_context else None,
            )
        )


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
