"""Speculative decoding with batching on: a draft model proposes, the target verifies.

`mlx_lm.server`, Ollama and LM Studio decode one request at a time when a draft model is
set. Here the sequences that can use the draft form a batch of their own, beside the
`BatchGenerator` that runs every other request in the same engine step. Each round:

1. the draft proposes k tokens for every sequence of the batch (k batched draft steps);
2. the target scores `[pending, d1..dk]` for the whole batch in one forward pass;
3. each sequence's accepted count comes from the acceptance rule (acceptance.py);
4. every sequence advances by the batch's smallest accepted count n, plus one token:
   its first n drafts (accepted by all), then its own next token (the residual or bonus
   sample where it stopped at n, else its accepted draft n+1). Every emitted token is a
   token the target itself would have produced, and every cache is trimmed by the same
   amount, which `BatchKVCache` supports (per-sequence trims would need a roll of the
   whole cache per round).

The batch speaks `BatchGenerator`'s language (`insert`, `remove`, `next`, responses with
`uid`, `token`, `finish_reason`, `prompt_cache`, `all_tokens`), so `BatchRunner` feeds
its tokens through the same `Sequence` (stop strings, tool and thinking parsing,
cancellation) and keeps the target's cache in the same prompt cache; the draft's cache is
kept there too, under its own key. Prefill is chunked between rounds as the plain path's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import trim_prompt_cache
from mlx_lm.sample_utils import greedy_sampler

from .acceptance import accept_greedy, accept_sampled, one_hot, probabilities
from .sampling import Distribution

log = logging.getLogger("ollmlx.worker")

UID_BASE = 1 << 40  # the speculative batch's uids never meet the BatchGenerator's
DRAFT_KEY = "draft"  # the draft's caches in the shared prompt cache


def eligible(request: Any, sampler: Any, processors: list[Any]) -> bool:
    """Whether a request can decode with the draft. Not: logprobs (the emitted token's
    logprobs would be the residual's), grammars and penalties (logits processors that
    follow the sequence token by token) and seeded sampling (its output must not depend
    on what else is in the batch)."""
    if request.logprobs or request.top_logprobs or request.format or processors:
        return False
    return sampler is greedy_sampler or not getattr(sampler, "seeded", True)


@dataclass
class Response:
    """One emitted token, shaped like mlx-lm's `GenerationBatch.Response`."""

    uid: int
    token: int
    finish_reason: str | None = None
    logprobs: Any = None
    prompt_cache: list[Any] | None = None
    all_tokens: list[int] | None = None


@dataclass
class _Member:
    uid: int
    prompt_length: int
    tokens: list[int]  # the tokens whose keys and values the target's cache holds
    max_tokens: int
    distribution: Distribution | None  # None: greedy
    generated: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0  # by its own rule (the batch may have kept fewer)


@dataclass
class _Prefill:
    member: _Member
    target: list[Any]  # single-sequence caches, filled chunk by chunk
    draft: list[Any]
    target_rest: list[int]  # prompt tokens still to prefill (not the last one)
    draft_rest: list[int]
    last: int  # the last prompt token: the first round's input


@dataclass
class Stats:
    rounds: int = 0
    drafted: int = 0  # draft tokens proposed, summed over sequences
    accepted: int = 0  # of them, accepted by each sequence's own rule
    emitted: int = 0  # tokens emitted (accepted by the whole batch, plus one each)


class SpeculativeBatch:
    def __init__(
        self,
        model: Any,
        draft_model: Any,
        num_draft: int,
        eos: set[int],
        make_cache: Callable[[], list[Any]],
        make_draft_cache: Callable[[], list[Any]],
        prompt_cache: Callable[[], Any],
        prefill_step: int = 512,
    ) -> None:
        self._model = model
        self._draft_model = draft_model
        self.num_draft = max(1, num_draft)
        self._eos = eos
        self._make_cache = make_cache
        self._make_draft_cache = make_draft_cache
        self._prompt_cache = prompt_cache  # the runner's LRUPromptCache (or None), now
        self._prefill_step = prefill_step
        self._members: list[_Member] = []
        self._pending: list[_Prefill] = []
        self._target: list[Any] = []  # batch caches, one per layer
        self._draft: list[Any] = []
        self._last: list[int] = []  # per member: the token to feed next (not cached yet)
        self._lag: mx.array | None = None  # drafts the draft model has not seen yet
        self._uid = UID_BASE
        self._vocab = int(model.args.vocab_size)
        self.stats = Stats()

    def __len__(self) -> int:
        return len(self._members) + len(self._pending)

    def owns(self, uid: int) -> bool:
        return uid >= UID_BASE

    # -- BatchGenerator's interface ----------------------------------------------------

    def insert(
        self,
        prompts: list[list[int]],
        max_tokens: list[int],
        caches: list[Any] | None = None,
        all_tokens: list[list[int]] | None = None,
        samplers: list[Any] | None = None,
        logits_processors: list[Any] | None = None,
    ) -> list[int]:
        uids = []
        for i, rest in enumerate(prompts):
            cached = all_tokens[i] if all_tokens else []
            prompt = [*cached, *rest]
            cache = caches[i] if caches and caches[i] is not None else self._make_cache()
            sampler = samplers[i] if samplers else greedy_sampler
            draft, draft_rest = self._draft_prefix(prompt)
            member = _Member(
                uid=self._uid,
                prompt_length=len(prompt),
                tokens=prompt[:-1],
                max_tokens=max_tokens[i],
                distribution=getattr(sampler, "distribution", None),
            )
            self._uid += 1
            uids.append(member.uid)
            self._pending.append(
                _Prefill(member, cache, draft, list(rest[:-1]), draft_rest[:-1], prompt[-1])
            )
        return uids

    def remove(self, uids: list[int], return_prompt_caches: bool = False) -> dict[int, Any]:
        gone = set(uids)
        caches: dict[int, Any] = {}
        self._pending = [p for p in self._pending if p.member.uid not in gone]
        keep = []
        for b, member in enumerate(self._members):
            if member.uid not in gone:
                keep.append(b)
            else:
                self._log(member)
                if return_prompt_caches:
                    caches[member.uid] = self._extract(b, len(member.tokens))
        if len(keep) < len(self._members):
            self._filter(keep)
        return caches

    def next(self) -> tuple[list[Any], list[Response]]:
        responses = self._round() if self._members else []
        self._prefill()
        return [], responses

    def close(self) -> None:
        self._members, self._pending, self._target, self._draft = [], [], [], []
        self._last, self._lag = [], None

    # -- prefill -------------------------------------------------------------------------

    def _draft_prefix(self, prompt: list[int]) -> tuple[list[Any], list[int]]:
        """The draft's cache of the longest prefix it has cached, and what is left."""
        lru = self._prompt_cache()
        if lru is not None:
            cache, rest = lru.fetch_nearest_cache(DRAFT_KEY, prompt)
            if cache is not None:
                if not rest:
                    trim_prompt_cache(cache, 1)
                    rest = prompt[-1:]
                return cache, list(rest)
        return self._make_draft_cache(), list(prompt)

    def _prefill(self) -> None:
        """Up to one chunk of prompt for each model, then join whoever is done."""
        budget, done = self._prefill_step, []
        while self._pending and budget > 0:
            job = self._pending[0]
            chunk = min(budget, max(len(job.target_rest), len(job.draft_rest)))
            if job.target_rest:
                self._model(mx.array([job.target_rest[:chunk]]), cache=job.target)
                job.target_rest = job.target_rest[chunk:]
            if job.draft_rest:
                self._draft_model(mx.array([job.draft_rest[:chunk]]), cache=job.draft)
                job.draft_rest = job.draft_rest[chunk:]
            mx.eval([c.state for c in (*job.target, *job.draft)])
            budget -= max(chunk, 1)
            if not job.target_rest and not job.draft_rest:
                done.append(self._pending.pop(0))
        if done:
            self._join(done)

    def _join(self, jobs: list[_Prefill]) -> None:
        if self._lag is not None:  # newcomers have no lagging draft: settle the others'
            self._draft_model(self._lag[:, None], cache=self._draft)
            self._lag = None
        target = _merge([job.target for job in jobs])
        draft = _merge([job.draft for job in jobs])
        if not self._members:
            self._target, self._draft = target, draft
        else:
            for mine, theirs in zip((*self._target, *self._draft), (*target, *draft), strict=True):
                mine.extend(theirs)
        self._members += [job.member for job in jobs]
        self._last += [job.last for job in jobs]

    # -- one round -----------------------------------------------------------------------

    def _round(self) -> list[Response]:
        members = self._members
        room = max(m.max_tokens - m.generated for m in members)
        k = max(1, min(self.num_draft, room - 1))
        greedy = all(m.distribution is None for m in members)
        pending = mx.array(self._last)
        step = pending[:, None] if self._lag is None else mx.stack([self._lag, pending], axis=1)
        self._lag = None
        drafts, q = [], []
        for _ in range(k):
            logits = self._align(self._draft_model(step, cache=self._draft)[:, -1, :])
            token, probs = self._propose(logits, greedy)
            drafts.append(token)
            q.append(probs)
            step = token[:, None]
        proposed = mx.stack(drafts, axis=1)
        logits = self._model(
            mx.concatenate([pending[:, None], proposed], axis=1), cache=self._target
        )
        if greedy:
            accepted, following = accept_greedy(mx.argmax(logits, axis=-1), proposed)
        else:
            target = self._target_probs(logits)
            uniform = mx.random.uniform(shape=proposed.shape)
            accepted, following = accept_sampled(target, mx.stack(q, axis=1), proposed, uniform)
        mx.eval(accepted, following, proposed)
        return self._advance(k, proposed, accepted.tolist(), following.tolist())

    def _align(self, logits: mx.array) -> mx.array:
        """The draft's logits over the target's vocabulary (their padded sizes may differ:
        past the tokenizer's ids, a token neither model emits)."""
        width = self._vocab
        if logits.shape[-1] > width:
            return logits[..., :width]
        if logits.shape[-1] < width:
            pad = mx.full((*logits.shape[:-1], width - logits.shape[-1]), -mx.inf, logits.dtype)
            return mx.concatenate([logits, pad], axis=-1)
        return logits

    def _propose(self, logits: mx.array, greedy: bool) -> tuple[mx.array, mx.array | None]:
        """Each sequence's next draft token, and (sampled rounds) the draft's distribution."""
        if greedy:
            return mx.argmax(logits, axis=-1), None
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        rows = [
            one_hot(mx.argmax(logprobs[b]), logits.shape[-1])
            if m.distribution is None
            else probabilities(m.distribution(logprobs[b : b + 1]))[0]
            for b, m in enumerate(self._members)
        ]
        probs = mx.stack(rows)
        return mx.random.categorical(mx.log(probs)), probs

    def _target_probs(self, logits: mx.array) -> mx.array:
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        rows = [
            one_hot(mx.argmax(logprobs[b], axis=-1), logits.shape[-1])
            if m.distribution is None
            else probabilities(m.distribution(logprobs[b]))
            for b, m in enumerate(self._members)
        ]
        return mx.stack(rows)

    def _advance(
        self, k: int, proposed: mx.array, accepted: list[int], following: list[int]
    ) -> list[Response]:
        drafts = proposed.tolist()
        n = min(accepted)
        trim_prompt_cache(self._target, k - n)  # keeps the pending token and n drafts
        if n == k:
            self._lag = proposed[:, k - 1]  # the draft never saw its own last proposal
        else:
            trim_prompt_cache(self._draft, k - n - 1)
        stats = self.stats
        stats.rounds += 1
        stats.drafted += k * len(drafts)
        stats.accepted += sum(accepted)
        responses: list[Response] = []
        keep = []
        for b, member in enumerate(self._members):
            last = following[b] if accepted[b] == n else drafts[b][n]
            emitted = [*drafts[b][:n], last]
            member.tokens += [self._last[b], *drafts[b][:n]]
            self._last[b] = last
            member.rounds += 1
            member.drafted += k
            member.accepted += accepted[b]
            finished = False
            for token in emitted:
                member.generated += 1
                stats.emitted += 1
                finish = (
                    "stop"
                    if token in self._eos
                    else "length"
                    if member.generated >= member.max_tokens
                    else None
                )
                if finish is None:
                    responses.append(Response(member.uid, token))
                    continue
                length = member.prompt_length + member.generated - 1  # before this token
                cache, tokens = self._extract(b, length)
                self._log(member)
                responses.append(Response(member.uid, token, finish, None, cache, tokens))
                finished = True
                break
            if not finished:
                keep.append(b)
        if len(keep) < len(self._members):
            self._filter(keep)
        return responses

    # -- bookkeeping ---------------------------------------------------------------------

    @staticmethod
    def _log(member: _Member) -> None:
        log.debug(
            "speculative decoding: %d tokens in %d rounds, %d of %d drafts accepted",
            member.generated,
            member.rounds,
            member.accepted,
            member.drafted,
        )

    def _extract(self, b: int, length: int) -> tuple[list[Any], list[int]]:
        """Sequence b's target cache holding its first `length` tokens (for the prompt
        cache); its draft cache goes into the prompt cache under the draft's key."""
        member = self._members[b]
        tokens = member.tokens[:length]
        target = [c.extract(b) for c in self._target]
        trim_prompt_cache(target, len(member.tokens) - len(tokens))
        lru = self._prompt_cache()
        if lru is not None and tokens:
            seen = len(member.tokens) - (1 if self._lag is not None else 0)
            draft = [c.extract(b) for c in self._draft]
            trim_prompt_cache(draft, max(seen - len(tokens), 0))
            lru.insert_cache(DRAFT_KEY, tokens[: min(seen, len(tokens))], draft)
        return target, tokens

    def _filter(self, keep: list[int]) -> None:
        if not keep:
            self._members, self._target, self._draft, self._last = [], [], [], []
            self._lag = None
            return
        for cache in (*self._target, *self._draft):
            cache.filter(keep)
        self._members = [self._members[b] for b in keep]
        self._last = [self._last[b] for b in keep]
        if self._lag is not None:
            self._lag = self._lag[mx.array(keep)]


def _merge(caches: list[list[Any]]) -> list[Any]:
    """Per layer, one batch cache of these sequences' single caches."""
    layers = len(caches[0])
    return [type(caches[0][i]).merge([c[i] for c in caches]) for i in range(layers)]


def load_draft(draft_dir: Path, model: Any, tokenizer: Any) -> Any:
    """The draft model, checked against the target: same vocabulary, plain KV caches (a
    round trims them). None, said in the log, when it cannot serve as a draft."""
    from mlx_lm import load
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    draft, draft_tokenizer = load(str(draft_dir))
    if draft_tokenizer.get_vocab() != tokenizer.get_vocab():
        log.warning("draft model ignored: its vocabulary is not the model's")
        return None
    for which in (model, draft):
        if not all(type(c) is KVCache for c in make_prompt_cache(which)):
            log.warning("draft model ignored: speculative decoding needs plain KV caches")
            return None
    return draft
