"""The acceptance rule of speculative decoding, checked on known distributions.

Target and draft are context-free here (fixed distributions per position), so the
emitted tokens must follow the target's distributions exactly; a chi-square statistic
measures it, and the same statistic applied to a rule that skips the rejection step (so
emits the draft's tokens) must flag it: the test can fail.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from ollmlx_worker.acceptance import accept_greedy, accept_sampled

TRIALS = 40_000
CRITICAL = 20.0  # chi-square, 3 degrees of freedom: p < 0.0002
P = [[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]  # k + 1 = 3
Q = [[0.1, 0.2, 0.3, 0.4], [0.4, 0.4, 0.1, 0.1]]  # the draft's, k = 2


def _round(uniform_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One verification of TRIALS independent sequences: (drafts, accepted, following)."""
    mx.random.seed(1234)
    q = mx.broadcast_to(mx.array(Q), (TRIALS, 2, 4))
    p = mx.broadcast_to(mx.array(P), (TRIALS, 3, 4))
    drafts = mx.random.categorical(mx.log(q))
    uniform = mx.random.uniform(shape=(TRIALS, 2)) * uniform_scale
    accepted, following = accept_sampled(p, q, drafts, uniform)
    return np.array(drafts), np.array(accepted), np.array(following)


def _emitted(
    drafts: np.ndarray, accepted: np.ndarray, following: np.ndarray, pos: int
) -> np.ndarray:
    """Token `pos` of each sequence's output, for sequences that emitted that many."""
    reach = accepted >= pos  # positions before `pos` were accepted drafts
    if pos == drafts.shape[1]:
        return following[reach]  # the bonus token after k accepted drafts
    return np.where(accepted[reach] > pos, drafts[reach, pos], following[reach])


def _chi2(tokens: np.ndarray, probs: list[float]) -> float:
    observed = np.bincount(tokens, minlength=4)
    expected = np.array(probs) * len(tokens)
    return float(((observed - expected) ** 2 / expected).sum())


def test_emitted_tokens_follow_the_target_at_every_position() -> None:
    drafts, accepted, following = _round()
    for pos in range(3):
        tokens = _emitted(drafts, accepted, following, pos)
        assert len(tokens) > 2000
        assert _chi2(tokens, P[pos]) < CRITICAL, pos


def test_first_draft_is_accepted_with_the_overlap_of_p_and_q() -> None:
    _, accepted, _ = _round()
    overlap = float(np.minimum(P[0], Q[0]).sum())  # 0.55
    assert abs(float((accepted >= 1).mean()) - overlap) < 0.01


def test_skipping_the_rejection_step_is_detected() -> None:
    # Uniform draws of 0 accept every draft: the output is then the draft's distribution.
    drafts, accepted, following = _round(uniform_scale=0.0)
    assert (accepted == 2).all()
    assert _chi2(_emitted(drafts, accepted, following, 0), P[0]) > 100 * CRITICAL


def test_greedy_keeps_drafts_while_they_are_the_targets_argmax() -> None:
    target = mx.array([[1, 2, 3], [1, 5, 3], [7, 2, 3]])
    drafts = mx.array([[1, 2], [1, 2], [1, 2]])
    accepted, following = accept_greedy(target, drafts)
    assert accepted.tolist() == [2, 1, 0]
    assert following.tolist() == [3, 5, 7]
