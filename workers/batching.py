"""Continuous batching on mlx-lm's BatchGenerator, run by the engine thread only.

Each request is one sequence in the batch with its own sampler (and seed), logits
processors, token limit and stop strings. A new request joins the running batch at the
next step; prefill runs in chunks between decode steps, so a long prompt does not freeze
the other streams for its whole length.

Failures stay with the request that caused them: an exception while turning one
sequence's token into its events ends that sequence alone; a failed batch step (which no
single sequence can be blamed for) ends the sequences of that step and starts a fresh
generator, with the prompt cache emptied since its entries may hold the failed graph.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .constrain import GrammarProcessor, make_llg_tokenizer
from .disk_cache import DiskPromptCache, cached_entries, spilling_cache
from .faults import inject
from .kvquant import fresh_caches
from .prompts import shift_window
from .sampling import build_logits_processors, build_sampler
from .sequence import Sequence, response_parser
from .speculative import SpeculativeBatch, eligible

log = logging.getLogger("ollmlx.worker")

PREFILL_STEP = 512  # prompt tokens per prefill chunk between two decode steps
CACHE_KEY = "model"  # one model per worker: every cached prefix belongs to it
MAX_CACHED_PREFIXES = 16
OPEN_ENDED_CONTEXTS = 10  # num_predict -1 with shift: at most this many context windows


@dataclass
class _Decoding:
    """How a sequence samples, and the tokens in its context window now."""

    sampler: Any
    processors: list[Any]
    window: list[int]


class BatchRunner:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        cache_bytes: int = 0,
        max_batch: int = 32,
        disk: DiskPromptCache | None = None,
        draft: Any = None,  # a draft model: eligible requests decode speculatively
        num_draft: int = 4,
        kv_bits: int = 0,  # a quantized KV cache (kvquant.py); 0: the model's own
        kv_group: int = 64,
    ) -> None:
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.models.cache import make_prompt_cache

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
        self._detokenizers: dict[int, Any] = {}
        self._decoding: dict[int, _Decoding] = {}  # what a context shift re-inserts
        self.vocab_size = int(model.args.vocab_size) if hasattr(model, "args") else 0
        self._llg_tokenizer: Any = None  # built on the first constrained request
        self._cache_bytes = cache_bytes
        # KV caches of finished requests, by token prefix: a chat's next turn only
        # prefills what is new. Bounded in bytes, least recently used out first.
        # A disk tier keeps long prefixes across restarts (`OLLMLX_PROMPT_CACHE_DISK`).
        self._disk = disk
        self._new_cache = lambda: (
            spilling_cache(MAX_CACHED_PREFIXES, cache_bytes, disk, CACHE_KEY)
            if cache_bytes > 0
            else None
        )
        self._cache = self._new_cache()
        layers = len(model.layers)
        self._fresh = lambda: fresh_caches(layers, kv_bits, kv_group) if kv_bits else None
        self._spec = (
            SpeculativeBatch(
                model,
                draft,
                num_draft,
                self._eos,
                lambda: self._fresh() or make_prompt_cache(model),
                lambda: make_prompt_cache(draft),
                lambda: self._cache,
                PREFILL_STEP,
            )
            if draft is not None
            else None
        )

    def _owner(self, uid: int) -> Any:
        """The batch a sequence runs in: the speculative one or the plain generator."""
        return self._spec if self._spec is not None and self._spec.owns(uid) else self._generator

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def sequences(self) -> list[Sequence]:
        return list(self._active.values())

    def add(self, job: Any, prompt: list[int], max_tokens: int) -> None:
        parser = response_parser(self._tokenizer, job.request, prompt)
        seq = Sequence(job, prompt, parser, self._tokenizer.decode)
        if max_tokens <= 0:
            seq.finish("length")
            return
        options = job.request.sampling
        processors = build_logits_processors(options)
        if job.request.format:
            if self._llg_tokenizer is None:
                self._llg_tokenizer = make_llg_tokenizer(self._tokenizer)
            seq.grammar = GrammarProcessor(self._llg_tokenizer, job.request.format, self.vocab_size)
            processors.append(seq.grammar)  # last: it masks what the sampler really sees
        cache, rest = self._cached_prefix(prompt)
        seq.reused = len(prompt) - len(rest)
        sampler = build_sampler(options, self.vocab_size)
        speculative = self._spec is not None and eligible(job.request, sampler, processors)
        (uid,) = (self._spec if speculative else self._generator).insert(
            [rest],
            max_tokens=[max_tokens],
            caches=[cache if cache is not None else self._fresh()],
            all_tokens=[prompt[: seq.reused]],
            samplers=[sampler],
            logits_processors=[processors],
        )
        if seq.reused:
            log.debug("prompt cache: reused %d of %d prompt tokens", seq.reused, len(prompt))
        self._active[uid] = seq
        self._detokenizers[uid] = self._tokenizer.detokenizer
        self._decoding[uid] = _Decoding(sampler, processors, list(prompt))

    def _cached_prefix(self, prompt: list[int]) -> tuple[Any, list[int]]:
        """The KV cache of the longest cached prefix of `prompt` (memory or disk), and
        what is left to prefill."""
        if self._cache is None:
            return None, prompt
        from mlx_lm.models.cache import trim_prompt_cache

        cache, rest = self._cache.fetch_nearest_cache(CACHE_KEY, prompt)
        if cache is None:
            rest = prompt
        on_disk = self._disk.longest_prefix(prompt) if self._disk is not None else 0
        if self._disk is not None and on_disk > len(prompt) - len(rest):
            loaded = self._disk.load(prompt, on_disk)
            if loaded is not None:
                cache, rest = loaded, prompt[on_disk:]
        if cache is None:
            return None, prompt
        if not rest:  # an exact hit: recompute the last token to get its logits
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, list(rest)

    def flush_to_disk(self, budget: float = 2.0) -> None:
        """Before the worker stops: its in-memory prefixes go to the disk tier (within
        `budget` seconds, so a stop is never held up for long)."""
        if self._cache is None or self._disk is None:
            return
        deadline = time.monotonic() + budget
        entries = cached_entries(self._cache, CACHE_KEY)
        for tokens, cache in sorted(entries, key=lambda e: -len(e[0])):
            if time.monotonic() > deadline:
                break
            self._disk.store(tokens, cache)

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
            if self._spec is not None and len(self._spec):
                responses = [*responses, *self._spec.next()[1]]
        except Exception as exc:  # e.g. out of memory: no one sequence is to blame
            log.exception("batch step failed")
            self.fail_all(f"{type(exc).__name__}: {exc}")
            return
        for response in responses:
            seq = self._active.get(response.uid)
            if seq is None:
                continue
            try:
                inject("advance", seq.request)
                self._advance(response.uid, seq, response)
            except Exception as exc:  # this sequence's own failure: the batch goes on
                log.exception("request failed while decoding")
                self._drop(response.uid)
                seq.fail(f"{type(exc).__name__}: {exc}")
                continue
            if response.finish_reason is not None:
                self._keep_cache(response.all_tokens, response.prompt_cache)

    def _advance(self, uid: int, seq: Sequence, response: Any) -> None:
        if seq.grammar is not None and seq.grammar.error:
            raise RuntimeError(seq.grammar.error)  # this token came from unmasked logits
        token, finish = response.token, response.finish_reason
        if finish == "stop" and token in self._eos:
            seq.prompt_done()
            self._finish(uid, seq, "stop")  # the EOS token is not part of the answer
            return
        detokenizer = self._detokenizers[uid]
        detokenizer.add_token(token)
        seq.token(token, detokenizer.last_segment, response.logprobs)
        self._decoding[uid].window.append(token)
        if seq.stopped:
            if finish is None:
                removed = self._owner(uid).remove([uid], return_prompt_caches=True)
                for cache, tokens in removed.values():
                    self._keep_cache(tokens, cache)
            self._finish(uid, seq, "stop")
        elif finish is not None:
            if finish == "length" and self._shift(uid, seq):
                return
            self._finish(uid, seq, finish)

    def _shift(self, uid: int, seq: Sequence) -> bool:
        """The context is full but the answer may go on (`shift`, num_predict left): keep
        num_keep tokens, free half of the rest (as llama.cpp's context shift does for
        Ollama) and continue the same sequence on the shorter window, re-prefilled."""
        options, decoding = seq.request.sampling, self._decoding[uid]
        if not seq.request.shift or seq.grammar is not None:
            return False  # a grammar follows the whole answer: it cannot lose its start
        # Open-ended answers are bounded at several context windows, as Ollama bounds
        # them (llm/llama_server.go boundedNumPredict: 10 x num_ctx).
        limit = OPEN_ENDED_CONTEXTS * options.num_ctx
        budget = options.num_predict if 0 <= options.num_predict <= limit else limit
        if budget <= len(seq.generated):
            return False
        if len(decoding.window) < options.num_ctx:
            return False  # it ended for another reason (its own token budget)
        bos = getattr(self._tokenizer, "bos_token_id", None)
        window = shift_window(decoding.window, options.num_ctx, options.num_keep, bos)
        room = options.num_ctx - len(window)
        left = budget - len(seq.generated)
        (new_uid,) = self._owner(uid).insert(
            [window],
            max_tokens=[min(room, left)],
            caches=[self._fresh()],
            samplers=[decoding.sampler],
            logits_processors=[decoding.processors],
        )
        log.debug("context shift: kept %d of %d tokens", len(window), len(decoding.window))
        decoding.window = window
        self._active[new_uid] = self._active.pop(uid)
        self._detokenizers[new_uid] = self._detokenizers.pop(uid)
        self._decoding[new_uid] = self._decoding.pop(uid)
        return True

    def _finish(self, uid: int, seq: Sequence, reason: str) -> None:
        del self._active[uid]
        self._decoding.pop(uid, None)
        detokenizer = self._detokenizers.pop(uid)
        detokenizer.finalize()
        seq.finish(reason, detokenizer.last_segment)

    def _drop(self, uid: int) -> None:
        """Forget one sequence (the generator too), whatever state it is in."""
        self._active.pop(uid, None)
        self._detokenizers.pop(uid, None)
        self._decoding.pop(uid, None)
        try:
            self._owner(uid).remove([uid])
        except Exception:  # its state is unknown: start over rather than guess
            log.exception("could not remove a failed sequence; resetting the batch")
            self.fail_all("the batch was reset after another request failed")

    def _drop_cancelled(self) -> None:
        gone = [uid for uid, s in self._active.items() if s.cancelled]
        if not gone:
            return
        for uid in gone:
            self._owner(uid).remove([uid])
        for uid in gone:
            seq = self._active.pop(uid)
            self._detokenizers.pop(uid, None)
            self._decoding.pop(uid, None)
            # The client went away: stopped within one decode step.
            log.info("request cancelled by the client after %d tokens", len(seq.generated))

    def fail_all(self, message: str, status: int = 500) -> None:
        """End every running sequence with an error line and start a fresh generator."""
        for seq in self._active.values():
            seq.fail(message, status)
        self._active.clear()
        self._detokenizers.clear()
        self._decoding.clear()
        self._generator.close()
        if self._spec is not None:
            self._spec.close()
        self._generator = self._make()  # its state is unknown after a failed step
        self._cache = self._new_cache()  # cached entries may hold the failed graph
