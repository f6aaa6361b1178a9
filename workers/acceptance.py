"""The acceptance rule of speculative decoding: which drafted tokens the target keeps.

One round, for a batch of B sequences and k drafted tokens each: the target scored the
pending token and the k drafts in one pass, giving k + 1 next-token distributions `p`;
the draft proposed each token from its own distribution `q`. Draft j is kept with
probability min(1, p_j(d_j) / q_j(d_j)) while every earlier one was kept (standard
speculative sampling: Leviathan et al. 2023, Chen et al. 2023; mlx-lm's
`speculative_generate_step` is its greedy case). At the first rejection the next token
is drawn from the residual max(p - q, 0), renormalised; after k acceptances from p_k (the
"bonus" token). Every emitted token is then distributed exactly as the target alone would
sample it, whatever the draft proposes.

Greedy sequences are the one-hot case (p and q put all mass on their argmax): a draft is
kept when it equals the target's argmax, and the next token is the target's argmax.
"""

from __future__ import annotations

import mlx.core as mx


def accept_greedy(target: mx.array, drafts: mx.array) -> tuple[mx.array, mx.array]:
    """Greedy verification. `target`: (B, k+1) the target's argmax after the pending token
    and each draft; `drafts`: (B, k). Returns (accepted (B,), next token (B,))."""
    k = drafts.shape[1]
    agree = (drafts == target[:, :k]).astype(mx.int32)
    accepted = mx.cumprod(agree, axis=1).sum(axis=1)
    following = mx.take_along_axis(target, accepted[:, None], axis=1)[:, 0]
    return accepted, following


def accept_sampled(
    target: mx.array,
    draft: mx.array,
    drafts: mx.array,
    uniform: mx.array,
    key: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """Rejection sampling. `target`: (B, k+1, V) probabilities, `draft`: (B, k, V) the
    probabilities each draft was drawn from, `drafts`: (B, k) tokens, `uniform`: (B, k)
    draws in [0, 1). Returns (accepted (B,), next token (B,)): the residual sample at the
    first rejection, or the bonus sample from p_k when all k were accepted."""
    batch, k = drafts.shape
    index = drafts[..., None]
    p_d = mx.take_along_axis(target[:, :k], index, axis=-1)[..., 0]
    q_d = mx.take_along_axis(draft, index, axis=-1)[..., 0]
    # u < p/q, written without the division (q > 0: the draft drew this token).
    kept = (uniform * q_d < p_d).astype(mx.int32)
    accepted = mx.cumprod(kept, axis=1).sum(axis=1)
    where = accepted[:, None, None]
    p_next = mx.take_along_axis(target, where, axis=1)[:, 0]
    padded = mx.concatenate([draft, mx.zeros((batch, 1, draft.shape[-1]), draft.dtype)], axis=1)
    q_next = mx.take_along_axis(padded, where, axis=1)[:, 0]
    residual = mx.maximum(p_next - q_next, 0.0)
    # p == q leaves no residual mass; a rejection cannot happen then, but rounding can.
    empty = residual.sum(axis=-1, keepdims=True) <= 0
    residual = mx.where(empty, p_next, residual)
    following = mx.random.categorical(mx.log(residual), key=key)
    return accepted, following


def probabilities(logits: mx.array) -> mx.array:
    """Softmax over the vocabulary, in float32 (masked entries are -inf: probability 0)."""
    return mx.softmax(logits.astype(mx.float32), axis=-1)


def one_hot(tokens: mx.array, vocab: int) -> mx.array:
    """Probability 1 on each token: how a greedy sequence joins a sampled round."""
    return (mx.arange(vocab) == tokens[..., None]).astype(mx.float32)
