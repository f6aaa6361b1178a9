"""Vision models with mlx-vlm: images from base64, prompts, and a token stream.

A model directory whose config.json has a `vision_config` and whose `model_type` mlx-vlm
knows (`ollmlx.architectures.runs_with_mlx_vlm`) is loaded with `mlx_vlm.load` (model +
processor) instead of mlx-lm. Its requests run one at a time through mlx-vlm's
`stream_generate` (no batching: simple, and exactly what mlx-vlm computes). Each engine
step decodes one token of the running request, so new requests queue meanwhile, and
cancellation and stop strings act within one token, as in `batching.BatchRunner`.

Everything here runs on the engine thread, like all MLX work of a worker.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ollmlx.errors import StatusError
from ollmlx.protocol import CompletionRequest, DoneEvent, ErrorEvent, Message, TokenEvent

from .prompts import chat_messages, template_options
from .sampling import StopMatcher, build_logits_processors, build_sampler

log = logging.getLogger("ollmlx.worker")


def load(model_dir: Path, adapter_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, processor), loaded on the engine thread."""
    # A local directory only: the processor's Hub fallbacks must not wait on a network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlx_vlm import load as vlm_load

    adapter = str(adapter_dir) if adapter_dir else None
    return vlm_load(str(model_dir), adapter_path=adapter)


def sizes(model: Any) -> tuple[int, int]:
    """(context length, KV cache bytes per token) of the language model."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    text = getattr(model.config, "text_config", model.config)
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    head_dim = int(getattr(text, "head_dim", 0) or (hidden // heads if heads else 0))
    params: Any = tree_flatten(model.language_model.parameters())
    floats = [v.dtype.size for _, v in params if mx.issubdtype(v.dtype, mx.floating)]
    layers = len(getattr(model, "layers", None) or [])
    per_token = 2 * layers * kv_heads * head_dim * (floats[0] if floats else 2)
    return int(getattr(text, "max_position_embeddings", 0) or 0), per_token


def decode_image(data: str) -> Any:
    """A PIL image from Ollama's base64 string (a data: URL prefix is accepted too)."""
    from PIL import Image, UnidentifiedImageError

    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except (binascii.Error, ValueError) as exc:
        raise StatusError(f"invalid image input: illegal base64 data ({exc})", 400) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise StatusError(f"invalid image input: {exc}", 400) from None
    return image.convert("RGB") if image.mode != "RGB" else image


@dataclass
class VisionPrompt:
    """Processor outputs for one request; `len()` is its token count, images included."""

    tokens: list[int]
    inputs: dict[str, Any]  # input_ids, pixel_values, mask and model extras (grid sizes)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class _Running:
    job: Any  # engine.Job
    prompt: VisionPrompt
    stream: Iterator[Any]
    stops: StopMatcher
    started: int  # perf_counter_ns at admission
    first_token_at: int = 0
    generated: list[int] = field(default_factory=list)


def _turns(request: CompletionRequest) -> list[Message]:
    """Chat messages; generate's images belong to its one user message."""
    messages = list(chat_messages(request))
    if request.messages is None and request.images:
        last = messages[-1]
        messages[-1] = Message(role=last.role, content=last.content, images=request.images)
    return messages


def _message_dict(message: Message) -> dict[str, Any]:
    """Images as parts before the text, as Ollama places them."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images and message.role == "user":
        text = [{"type": "text", "text": message.content}] if message.content else []
        out["content"] = [{"type": "image"} for _ in message.images] + text
    if message.tool_calls:
        out["tool_calls"] = message.tool_calls
    if message.tool_name:
        out["name"] = message.tool_name
    return out


class VisionRunner:
    """The engine's batch for a vision model: the same add/step/busy surface as BatchRunner."""

    def __init__(self, model: Any, processor: Any) -> None:
        self._model = model
        self._processor = processor
        self._tokenizer = getattr(processor, "tokenizer", processor)
        self._waiting: deque[tuple[Any, VisionPrompt, int]] = deque()
        self._running: _Running | None = None
        self._llg_tokenizer: Any = None  # built on the first constrained request

    @property
    def busy(self) -> bool:
        return self._running is not None or bool(self._waiting)

    def prepare(self, request: CompletionRequest) -> VisionPrompt:
        """Render the chat with its images and run the processor, within num_ctx."""
        num_ctx = request.sampling.num_ctx
        messages = _turns(request)
        prompt = self._encode(request, messages)
        # Too long: drop whole old turns (and their images), as build_prompt does.
        while len(prompt) > num_ctx - 1 and request.truncate and request.messages is not None:
            droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
            if not droppable:
                break
            messages = [m for i, m in enumerate(messages) if i != droppable[0]]
            prompt = self._encode(request, messages)
        if len(prompt) > num_ctx - 1:
            raise StatusError("the input length exceeds the context length", 400)
        return prompt

    def _encode(self, request: CompletionRequest, messages: list[Message]) -> VisionPrompt:
        import mlx.core as mx
        from mlx_vlm import apply_chat_template, prepare_inputs
        from mlx_vlm.utils import should_add_special_tokens

        images = [decode_image(i) for m in messages for i in (m.images or [])]
        config = self._model.config
        text: Any
        if request.raw:
            text = request.prompt or ""
        else:
            options = template_options(request)
            if request.template:
                options["chat_template"] = request.template
            text = apply_chat_template(
                self._processor,
                config,
                [_message_dict(m) for m in messages],
                num_images=len(images),
                **options,
            )
        inputs = dict(
            prepare_inputs(
                self._processor,
                images=images or None,
                prompts=text,
                image_token_index=getattr(config, "image_token_index", None),
                add_special_tokens=should_add_special_tokens(config.model_type, self._processor),
            )
        )
        inputs["mask"] = inputs.pop("attention_mask", None)
        if request.context:  # an earlier /api/generate exchange, continued
            old = mx.array([request.context], dtype=inputs["input_ids"].dtype)
            inputs["input_ids"] = mx.concatenate([old, inputs["input_ids"]], axis=1)
            if inputs["mask"] is not None:
                inputs["mask"] = mx.ones(inputs["input_ids"].shape, dtype=inputs["mask"].dtype)
        return VisionPrompt(inputs["input_ids"][0].tolist(), inputs)

    def add(self, job: Any, prompt: VisionPrompt, max_tokens: int) -> None:
        if max_tokens <= 0:
            job.emit(DoneEvent("length", len(prompt), 0, 0, 0, _context(job, prompt, [])))
            return
        self._waiting.append((job, prompt, max_tokens))

    def step(self) -> None:
        """Decode one token of the running request, starting the next one if none runs."""
        if self._running is not None and self._running.job.cancelled.is_set():
            log.info("request cancelled by the client after %d tokens", self._running_count())
            self._close()
        while self._running is None and self._waiting:
            job, prompt, max_tokens = self._waiting.popleft()
            if not job.cancelled.is_set():
                self._start(job, prompt, max_tokens)
        running = self._running
        if running is None:
            return
        try:
            result = next(running.stream)
        except StopIteration:
            self._finish("stop")
            return
        except Exception as exc:  # e.g. out of memory: fail this request, keep serving
            log.exception("vision generation failed")
            running.job.emit(ErrorEvent(f"{type(exc).__name__}: {exc}", 500))
            self._close()
            return
        self._advance(running, result)

    def _running_count(self) -> int:
        return len(self._running.generated) if self._running else 0

    def _start(self, job: Any, prompt: VisionPrompt, max_tokens: int) -> None:
        from mlx_vlm import stream_generate

        options = job.request.sampling
        inputs = dict(prompt.inputs)
        processors = build_logits_processors(options)
        if job.request.format:  # last: the mask applies to the logits the sampler sees
            processors.append(self._grammar(job.request.format))
        stream = stream_generate(
            self._model,
            self._processor,
            "",  # unused: the inputs are already tokenized
            **inputs,
            max_tokens=max_tokens,
            sampler=build_sampler(options),
            logits_processors=processors,
        )
        self._running = _Running(
            job, prompt, stream, StopMatcher(options.stop), time.perf_counter_ns()
        )

    def _grammar(self, fmt: Any) -> Any:
        from .constrain import GrammarProcessor, make_llg_tokenizer

        if self._llg_tokenizer is None:
            eos = self._tokenizer.stopping_criteria.eos_token_ids  # set by mlx_vlm.load
            shim = SimpleNamespace(_tokenizer=self._tokenizer, eos_token_ids=list(eos))
            self._llg_tokenizer = make_llg_tokenizer(shim)
        config = self._model.config
        vocab = int(getattr(getattr(config, "text_config", config), "vocab_size", 0) or 0)
        return GrammarProcessor(self._llg_tokenizer, fmt, vocab)

    def _advance(self, running: _Running, result: Any) -> None:
        if not running.first_token_at:
            running.first_token_at = time.perf_counter_ns()
        if result.finish_reason is not None:
            # mlx-vlm's last result repeats the last token and carries the detokenizer's
            # tail; an EOS ends with "stop", the token budget with "length".
            text = running.stops.feed(result.text) + running.stops.flush()
            if text:
                running.job.emit(TokenEvent(text=text, token=-1))
            self._finish(result.finish_reason)
            return
        running.generated.append(int(result.token))
        text = running.stops.feed(result.text)
        running.job.emit(TokenEvent(text=text, token=int(result.token)))
        if running.stops.stopped:
            self._finish("stop")

    def _finish(self, reason: str) -> None:
        running = self._running
        if running is None:
            return
        self._close()
        finished = time.perf_counter_ns()
        first = running.first_token_at or finished
        running.job.emit(
            DoneEvent(
                done_reason=reason,
                prompt_eval_count=len(running.prompt),
                prompt_eval_duration=first - running.started,
                eval_count=len(running.generated),
                eval_duration=finished - first,
                context=_context(running.job, running.prompt, running.generated),
                stop_sequence=running.stops.matched,
            )
        )

    def _close(self) -> None:
        if self._running is not None:
            stream, self._running = self._running.stream, None
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # runs mlx-vlm's generator cleanup


def _context(job: Any, prompt: VisionPrompt, generated: list[int]) -> list[int] | None:
    return [*prompt.tokens, *generated] if job.request.return_context else None
