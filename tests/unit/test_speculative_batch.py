"""The speculative batch in process: sampled tokens follow the target's distribution.

1,500 copies of one prompt decode one token each, sampled (temperature 1, top_k
4) through draft proposals and batched verification; the tokens must follow the target's
own top-4 distribution at that point (chi-square), while the draft's differs from it.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache
from ollmlx_worker.acceptance import probabilities
from ollmlx_worker.sampling import build_sampler
from ollmlx_worker.speculative import SpeculativeBatch

from ollmlx.protocol import Sampling
from tests.draftmodel import build_draft_pair

COPIES = 1500
CRITICAL = 20.0  # chi-square, 3 degrees of freedom: p < 0.0002


@pytest.fixture(scope="module")
def loose_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loosepair")
    # Strongly damped only halfway: the draft often disagrees.
    return build_draft_pair(root / "t", root / "d", damping=0.6, num_layers=3)


def _distribution(model: object, prompt: list[int], options: Sampling) -> np.ndarray:
    logits = model(mx.array([prompt]))[0, -1]  # type: ignore[operator]
    logprobs = logits - mx.logsumexp(logits)
    shape = build_sampler(options, logits.shape[-1]).distribution  # type: ignore[attr-defined]
    return np.array(probabilities(shape(logprobs)))


def test_sampled_tokens_follow_the_target_not_the_draft(loose_pair: tuple[Path, Path]) -> None:
    target, tokenizer = load(str(loose_pair[0]))
    draft, _ = load(str(loose_pair[1]))
    options = Sampling(temperature=1.0, top_k=4, top_p=1.0)
    prompt = tokenizer.encode("the cat runs")
    p = _distribution(target, prompt, options)
    q = _distribution(draft, prompt, options)
    batch = SpeculativeBatch(
        target,
        draft,
        4,
        set(tokenizer.eos_token_ids),
        lambda: make_prompt_cache(target),
        lambda: make_prompt_cache(draft),
        lambda: None,
    )
    mx.random.seed(99)
    sampler = build_sampler(options, len(p))
    batch.insert([prompt] * COPIES, [1] * COPIES, samplers=[sampler] * COPIES)
    tokens = []
    while len(batch):
        tokens += [r.token for r in batch.next()[1]]
    assert len(tokens) == COPIES
    support = np.flatnonzero(p)
    assert len(support) == 4 and set(tokens) <= set(support.tolist())
    observed = np.array([tokens.count(t) for t in support])
    expected = p[support] * COPIES
    assert float(((observed - expected) ** 2 / expected).sum()) < CRITICAL
    # The draft proposes from another distribution, so some proposals were rejected, and
    # some were kept: both branches of the rule ran.
    assert 0 < batch.stats.accepted < batch.stats.drafted
    assert np.abs(p - q).sum() > 0.2
