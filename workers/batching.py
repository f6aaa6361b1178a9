"""Continuous batching on mlx-lm's BatchGenerator, run by the engine thread only.

Each request is one sequence in the batch with its own sampler (and seed), logits
processors, token limit and stop strings. A new request joins the running batch at the
next step; prefill runs in chunks between decode steps, so a long prompt does not freeze
the other streams for its whole length.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ollmlx.protocol import DoneEvent, ErrorEvent, TokenEvent, TokenLogprob

from .constrain import GrammarProcessor, make_llg_tokenizer
from .parsing import Parsed, ResponseParser
from .prompts import starts_in_thinking
from .sampling import StopMatcher, build_logits_processors, build_sampler

log = logging.getLogger("ollmlx.worker")

PREFILL_STEP = 512  # prompt tokens per prefill chunk between two decode steps
CACHE_KEY = "model"  # one model per worker: every cached prefix belongs to it
MAX_CACHED_PREFIXES = 16


@dataclass
class Sequence:
    job: Any  # engine.Job
    prompt: list[int]
    started: int  # perf_counter_ns at admission
    detokenizer: Any
    stops: StopMatcher
    parser: ResponseParser
    reused: int = 0  # prompt tokens served from the prompt cache
    first_token_at: int = 0
    generated: list[int] = field(default_factory=list)


class BatchRunner:
    def __init__(
        self, model: Any, tokenizer: Any, cache_bytes: int = 0, max_batch: int = 32
    ) -> None:
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.models.cache import LRUPromptCache

        self._tokenizer = tokenizer
        self._eos = set(tokenizer.eos_token_ids)
        self._make = lambda: BatchGenerator(
            model,
            stop_tokens=[[t] for t in self._eos],
            completion_batch_size=max_batch,
            prefill_batch_size=min(8, max_batch),
            prefill_step_size=PREFILL_STEP,
        )
        self._generator = self._make()
        self._active: dict[int, Sequence] = {}
        self._vocab = int(model.args.vocab_size) if hasattr(model, "args") else 0
        self._llg_tokenizer: Any = None  # built on the first constrained request
        # KV caches of finished requests, by token prefix: a chat's next turn only
        # prefills what is new. Bounded in bytes, least recently used out first.
        self._cache = (
            LRUPromptCache(max_size=MAX_CACHED_PREFIXES, max_bytes=cache_bytes)
            if cache_bytes > 0
            else None
        )

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def add(self, job: Any, prompt: list[int], max_tokens: int) -> None:
        options = job.request.sampling
        started = time.perf_counter_ns()
        if max_tokens <= 0:
            job.emit(DoneEvent("length", len(prompt), 0, 0, 0, _context(job, prompt, [])))
            return
        processors = build_logits_processors(options)
        if job.request.format:
            if self._llg_tokenizer is None:
                self._llg_tokenizer = make_llg_tokenizer(self._tokenizer)
            # Last: the mask applies to the logits the sampler really sees.
            processors.append(
                GrammarProcessor(self._llg_tokenizer, job.request.format, self._vocab)
            )
        cache, rest = self._cached_prefix(prompt)
        reused = len(prompt) - len(rest)
        (uid,) = self._generator.insert(
            [rest],
            max_tokens=[max_tokens],
            caches=[cache],
            all_tokens=[prompt[:reused]],
            samplers=[build_sampler(options)],
            logits_processors=[processors],
        )
        if reused:
            log.debug("prompt cache: reused %d of %d prompt tokens", reused, len(prompt))
        self._active[uid] = Sequence(
            job,
            prompt,
            started,
            self._tokenizer.detokenizer,
            StopMatcher(options.stop),
            self._parser(job.request, prompt),
            reused,
        )

    def _parser(self, request: Any, prompt: list[int]) -> ResponseParser:
        tok = self._tokenizer
        think = (tok.think_start, tok.think_end) if tok.has_thinking else None
        tool = (tok.tool_call_start, tok.tool_call_end) if tok.has_tool_calling else None
        return ResponseParser(
            think=think,
            tool=tool,
            tool_parser=tok.tool_parser,
            tools=request.tools,
            start_thinking=starts_in_thinking(tok, prompt),
            keep_thinking=request.think is not False,
        )

    def _cached_prefix(self, prompt: list[int]) -> tuple[Any, list[int]]:
        """The KV cache of the longest cached prefix of `prompt`, and what is left."""
        if self._cache is None:
            return None, prompt
        from mlx_lm.models.cache import trim_prompt_cache

        cache, rest = self._cache.fetch_nearest_cache(CACHE_KEY, prompt)
        if cache is None:
            return None, prompt
        if not rest:  # an exact hit: recompute the last token to get its logits
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, list(rest)

    def _keep_cache(self, tokens: list[int] | None, cache: Any) -> None:
        if self._cache is None or not tokens or cache is None:
            return
        self._cache.insert_cache(CACHE_KEY, list(tokens), cache)
        log.debug(
            "prompt cache: %d entries, %d bytes (limit %d)",
            len(self._cache),
            self._cache.nbytes,
            self._cache.max_bytes,
        )

    def step(self) -> None:
        """One decode step for every running sequence (plus one prefill chunk)."""
        self._drop_cancelled()
        if not self._active:
            return
        try:
            _, responses = self._generator.next()
        except Exception as exc:  # e.g. out of memory: fail these requests, keep serving
            log.exception("batch step failed")
            self._fail_all(f"{type(exc).__name__}: {exc}")
            return
        for response in responses:
            sequence = self._active.get(response.uid)
            if sequence is None:
                continue
            self._advance(response.uid, sequence, response)
            if response.finish_reason is not None:
                self._keep_cache(response.all_tokens, response.prompt_cache)

    def _advance(self, uid: int, seq: Sequence, response: Any) -> None:
        token, finish = response.token, response.finish_reason
        if not seq.first_token_at:
            seq.first_token_at = time.perf_counter_ns()
        if finish == "stop" and token in self._eos:
            self._finish(uid, seq, "stop")  # the EOS token is not part of the answer
            return
        seq.generated.append(token)
        seq.detokenizer.add_token(token)
        text = seq.stops.feed(seq.detokenizer.last_segment)
        logprobs = self._logprobs(seq, token, response.logprobs)
        seq.job.emit(_token_event(seq.parser.feed(text), token, logprobs))
        if seq.stops.stopped:
            if finish is None:
                removed = self._generator.remove([uid], return_prompt_caches=True)
                for cache, tokens in removed.values():
                    self._keep_cache(tokens, cache)
            self._finish(uid, seq, "stop")
        elif finish is not None:
            self._finish(uid, seq, finish)

    def _logprobs(self, seq: Sequence, token: int, logprobs: Any) -> list[TokenLogprob] | None:
        """The sampled token's log probability and the most likely alternatives."""
        request = seq.job.request
        if not request.logprobs and not request.top_logprobs:
            return None
        import mlx.core as mx

        top = None
        if request.top_logprobs:
            k = min(request.top_logprobs, logprobs.shape[-1])
            best = mx.argpartition(-logprobs, k - 1)[:k]
            ranked = sorted(
                zip(best.tolist(), logprobs[best].tolist(), strict=True), key=lambda pair: -pair[1]
            )
            top = [self._token_logprob(t, v) for t, v in ranked]
        entry = self._token_logprob(token, logprobs[token].item())
        entry.top_logprobs = top
        return [entry]

    def _token_logprob(self, token: int, value: float) -> TokenLogprob:
        text = self._tokenizer.decode([token])
        return TokenLogprob(token=text, logprob=float(value), bytes=list(text.encode()))

    def _finish(self, uid: int, seq: Sequence, reason: str) -> None:
        del self._active[uid]
        seq.detokenizer.finalize()
        tail = seq.parser.feed(seq.stops.feed(seq.detokenizer.last_segment) + seq.stops.flush())
        rest = seq.parser.flush()
        tail.content += rest.content
        tail.thinking += rest.thinking
        tail.tool_calls += rest.tool_calls
        if tail:
            seq.job.emit(_token_event(tail, -1, None))
        finished = time.perf_counter_ns()
        first = seq.first_token_at or finished
        seq.job.emit(
            DoneEvent(
                done_reason=reason,
                prompt_eval_count=len(seq.prompt) - seq.reused,  # as Ollama: evaluated only
                prompt_eval_duration=first - seq.started,
                eval_count=len(seq.generated),
                eval_duration=finished - first,
                context=_context(seq.job, seq.prompt, seq.generated),
                stop_sequence=seq.stops.matched,
            )
        )

    def _drop_cancelled(self) -> None:
        gone = [uid for uid, s in self._active.items() if s.job.cancelled.is_set()]
        if not gone:
            return
        self._generator.remove(gone)
        for uid in gone:
            sequence = self._active.pop(uid)
            # The client went away: stopped within one decode step.
            log.info("request cancelled by the client after %d tokens", len(sequence.generated))

    def _fail_all(self, message: str) -> None:
        for sequence in self._active.values():
            sequence.job.emit(ErrorEvent(message, 500))
        self._active.clear()
        self._generator.close()
        self._generator = self._make()  # its state is unknown after a failed step


def _token_event(parsed: Parsed, token: int, logprobs: list[TokenLogprob] | None) -> TokenEvent:
    return TokenEvent(
        text=parsed.content,
        token=token,
        logprobs=logprobs,
        thinking=parsed.thinking,
        tool_calls=parsed.tool_calls or None,
    )


def _context(job: Any, prompt: list[int], generated: list[int]) -> list[int] | None:
    return [*prompt, *generated] if job.request.return_context else None
