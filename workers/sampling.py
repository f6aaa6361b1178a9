"""Sampling options -> mlx-lm sampler and logits processors; stop strings matched on text."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    greedy_sampler,
    make_logits_processors,
)

from ollmlx.protocol import Sampling

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]
Distribution = Callable[[mx.array], mx.array]  # log probabilities -> logits to draw from


def build_distribution(options: Sampling, vocab_size: int = 0) -> Distribution | None:
    """The logits a sampled request draws from (top_k, top_p and min_p applied, scaled by
    1/temperature), as a function of the log probabilities; None for greedy requests.

    The sampler draws from exactly this, and speculative decoding weighs the target's and
    the draft's versions of it against each other (see acceptance.py).
    """
    if options.temperature <= 0:
        return None
    # Ollama treats top_k <= 0 and top_p >= 1 as "off"; top_k beyond the vocabulary keeps
    # every token (mlx-lm refuses it), and top_p 0 keeps the most likely one (llama.cpp).
    filters: list[Callable[[mx.array], mx.array]] = []
    top_k = options.top_k if not vocab_size or options.top_k < vocab_size else 0
    if options.top_p <= 0.0:
        top_k = 1
    elif options.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, options.top_p))
    if options.min_p > 0.0:
        filters.append(lambda x: apply_min_p(x, min(options.min_p, 1.0)))
    if top_k > 0:
        filters.append(lambda x: apply_top_k(x, top_k))
    scale = 1.0 / options.temperature

    def shape(logprobs: mx.array) -> mx.array:
        for keep in filters:
            logprobs = keep(logprobs)
        return logprobs * scale

    return shape


def build_sampler(options: Sampling, vocab_size: int = 0) -> Sampler:
    """A sampler of this request's own.

    Greedy requests share mlx-lm's one greedy sampler, so a batch of them samples in one
    call. A seeded request draws from its own PRNG key, so its output does not depend on
    what else is in the batch. The sampler carries its `distribution` (and whether it is
    `seeded`) for speculative decoding.
    """
    shape = build_distribution(options, vocab_size)
    if shape is None:
        return greedy_sampler
    # A 64-bit seed (the supervisor checked its width); negative ones mean random.
    seed = options.seed % (1 << 64) if options.seed is not None else None
    key = [mx.random.key(seed)] if seed is not None else None

    def sample(logprobs: mx.array) -> mx.array:
        if key is None:
            return mx.random.categorical(shape(logprobs))
        key[0], draw = mx.random.split(key[0])
        return mx.random.categorical(shape(logprobs), key=draw)

    sample.distribution = shape  # type: ignore[attr-defined]
    sample.seeded = key is not None  # type: ignore[attr-defined]
    return sample


def build_logits_processors(options: Sampling) -> list[LogitsProcessor]:
    # Ollama's repeat_last_n: 0 turns the penalties off, -1 looks at the whole context.
    if options.repeat_last_n == 0:
        return []
    context = options.repeat_last_n if options.repeat_last_n > 0 else options.num_ctx
    return make_logits_processors(
        repetition_penalty=options.repeat_penalty if options.repeat_penalty != 1.0 else None,
        repetition_context_size=context,
        presence_penalty=options.presence_penalty or None,
        presence_context_size=context,
        frequency_penalty=options.frequency_penalty or None,
        frequency_context_size=context,
    )


class StopMatcher:
    """Finds stop strings in streamed text, across token boundaries.

    Text that could be the start of a stop string is held back until it is known not
    to be one, so a stop string never reaches the client, not even in part.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped = False
        self.matched = ""  # the stop string that was found

    def feed(self, text: str) -> str:
        """Add decoded text; return what is safe to emit now."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._pending += text
        found = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        first = min(found)[0] if found else -1
        if first >= 0:
            self.stopped = True
            self.matched = min(found)[1]
            out, self._pending = self._pending[:first], ""
            return out
        keep = self._held_suffix_length()
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """The held-back text, once generation ended without completing a stop string."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _held_suffix_length(self) -> int:
        # The longest suffix of the pending text that is a proper prefix of a stop string.
        limit = min(len(self._pending), self._longest - 1)
        for size in range(limit, 0, -1):
            tail = self._pending[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
