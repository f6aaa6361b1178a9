"""A quantized KV cache that batches: `OLLAMA_KV_CACHE_TYPE` q8_0 / q4_0 with batching on.

mlx-lm has a single-sequence `QuantizedKVCache` but no batched one, so `mlx_lm.server`
turns batching off for `--kv-bits`. `BatchQuantizedKVCache` is `BatchKVCache` (left
padding, a shared write index, per-sequence offsets) over quantized keys and values: each
is a (packed data, scales, biases) triple quantized along the head dimension, which is
what mlx-lm's attention (`scaled_dot_product_attention`) expects of a cache that has
`bits`. It supports what `BatchGenerator` and the prompt cache need: merge, extend,
filter, extract, trim, prepare/finalize (right-padded prefill).

`QuantizedCache` is mlx-lm's single-sequence cache plus `merge`, so a fresh or cached
per-sequence cache joins a batch through `BatchGenerator`'s usual `_merge_caches`.
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import KVCache, QuantizedKVCache, _BaseCache, dynamic_roll

from ollmlx.config import KV_CACHE_BITS, kv_group_size

log = logging.getLogger("ollmlx.worker")

Triple = tuple[mx.array, mx.array, mx.array]


class QuantizedCache(QuantizedKVCache):
    """One sequence's quantized cache that can join a batch (mlx-lm's has no `merge`)."""

    @classmethod
    def merge(cls, caches: list[Any]) -> BatchQuantizedKVCache:
        return BatchQuantizedKVCache.merge(caches)

    def size(self) -> int:
        return int(self.offset)


def saveable(cache: Any) -> Any:
    """As mlx-lm's own class, so `save_prompt_cache` writes a name it can load back."""
    return QuantizedKVCache.from_state(cache.state) if type(cache) is QuantizedCache else cache


def mergeable(cache: Any) -> Any:
    """A loaded quantized cache as one that can join a batch."""
    return QuantizedCache.from_state(cache.state) if type(cache) is QuantizedKVCache else cache


def fresh_caches(layers: int, bits: int, group_size: int) -> list[QuantizedCache]:
    return [QuantizedCache(group_size=group_size, bits=bits) for _ in range(layers)]


def _zeros(
    batch: int, heads: int, steps: int, dim: int, bits: int, group: int, dtype: Any
) -> Triple:
    per_int = 32 // bits
    return (
        mx.zeros((batch, heads, steps, dim // per_int), dtype=mx.uint32),
        mx.zeros((batch, heads, steps, dim // group), dtype=dtype),
        mx.zeros((batch, heads, steps, dim // group), dtype=dtype),
    )


def _head_dim(triple: Triple, bits: int) -> int:
    return int(triple[0].shape[-1]) * (32 // bits)


class BatchQuantizedKVCache(_BaseCache):
    """`BatchKVCache` with quantized keys and values (see the module docstring)."""

    step = 256

    def __init__(self, left_padding: list[int], group_size: int = 64, bits: int = 8) -> None:
        self.keys: Triple | None = None
        self.values: Triple | None = None
        self.group_size = group_size
        self.bits = bits
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-p for p in left_padding])
        self._idx = 0
        self._right_padding: mx.array | None = None

    # -- what the model's attention calls ---------------------------------------------

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[Triple, Triple]:
        batch, heads, steps, k_dim = keys.shape
        v_dim = values.shape[-1]
        prev = self._idx
        if self.keys is None or prev + steps > self.keys[0].shape[-2]:
            new = (self.step + steps - 1) // self.step * self.step
            grow_k = _zeros(batch, heads, new, k_dim, self.bits, self.group_size, keys.dtype)
            grow_v = _zeros(batch, heads, new, v_dim, self.bits, self.group_size, keys.dtype)
            if self.keys is None or self.values is None:
                self.keys, self.values = grow_k, grow_v
            else:
                old_k, old_v = tree_map(lambda x: x[..., :prev, :], (self.keys, self.values))
                self.keys = tuple(  # type: ignore[assignment]
                    mx.concatenate([a, b], axis=-2) for a, b in zip(old_k, grow_k, strict=True)
                )
                self.values = tuple(  # type: ignore[assignment]
                    mx.concatenate([a, b], axis=-2) for a, b in zip(old_v, grow_v, strict=True)
                )
        assert self.keys is not None and self.values is not None
        self.offset = self.offset + steps
        self._idx += steps
        quant_k = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        quant_v = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for i in range(3):
            self.keys[i][..., prev : self._idx, :] = quant_k[i]
            self.values[i][..., prev : self._idx, :] = quant_v[i]
        return self.keys_and_values()

    def keys_and_values(self) -> tuple[Triple, Triple]:
        assert self.keys is not None and self.values is not None
        return tree_map(lambda x: x[..., : self._idx, :], (self.keys, self.values))

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> mx.array:
        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    # -- prefill with right padding (BatchGenerator's PromptProcessingBatch) ---------

    def prepare(
        self,
        *,
        left_padding: list[int] | None = None,
        lengths: list[int] | None = None,
        right_padding: list[int] | None = None,
    ) -> None:
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("left padding can only be added to an empty cache")
            pad = mx.array(left_padding)
            self.left_padding = self.left_padding + pad
            self.offset = self.offset - pad
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self) -> None:
        if self._right_padding is None:
            return
        pad = self._right_padding
        self.keys, self.values = tree_map(
            lambda x: dynamic_roll(x, pad[:, None], axis=2), (self.keys, self.values)
        )
        self.offset = self.offset - pad
        self.left_padding = self.left_padding + pad
        self._right_padding = None

    # -- batch bookkeeping ------------------------------------------------------------

    @property
    def state(self) -> Any:
        return self.keys, self.values, self.offset, self.left_padding, self._idx

    @state.setter
    def state(self, v: Any) -> None:
        self.keys, self.values, self.offset, self.left_padding, self._idx = v

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return sum(int(x.nbytes) for x in (*self.keys, *self.values))

    def filter(self, batch_indices: Any) -> None:
        """Keep only the given sequences (in place), dropping padding none of them needs."""
        if self.keys is not None:
            self.keys, self.values = tree_map(lambda x: x[batch_indices], (self.keys, self.values))
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shift = min(self.left_padding.tolist())
        if shift > 0:
            if self.keys is not None:
                self.keys, self.values = tree_map(
                    lambda x: x[..., shift:, :], (self.keys, self.values)
                )
            self._idx -= shift
            self.left_padding = self.left_padding - shift

    def extend(self, other: BatchQuantizedKVCache) -> None:
        """Append `other`'s sequences (in place), right-aligned at a common write index."""
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        ref = self.keys if self.keys is not None else other.keys
        ref_v = self.values if self.values is not None else other.values
        assert ref is not None and ref_v is not None
        heads, dtype = int(ref[0].shape[1]), ref[1].dtype
        k_dim, v_dim = _head_dim(ref, self.bits), _head_dim(ref_v, self.bits)
        top = max(self._idx, other._idx)
        size = max(c.keys[0].shape[2] if c.keys is not None else 0 for c in (self, other))

        def pad(c: BatchQuantizedKVCache) -> tuple[Triple, Triple, mx.array, mx.array]:
            k, v = c.keys, c.values
            if k is None or v is None:
                rows = int(c.offset.shape[0])
                k = _zeros(rows, heads, 0, k_dim, self.bits, self.group_size, dtype)
                v = _zeros(rows, heads, 0, v_dim, self.bits, self.group_size, dtype)
            left = top - c._idx
            right = size - k[0].shape[2] - left
            if right < 0:
                k, v = tree_map(lambda x: x[..., :right, :], (k, v))
                right = 0
            if left or right:
                widths = [(0, 0), (0, 0), (left, right), (0, 0)]
                k, v = tree_map(lambda x: mx.pad(x, widths), (k, v))
            return k, v, c.offset, c.left_padding + left

        (k1, v1, o1, l1), (k2, v2, o2, l2) = pad(self), pad(other)
        self.keys = tuple(mx.concatenate([a, b]) for a, b in zip(k1, k2, strict=True))  # type: ignore[assignment]
        self.values = tuple(mx.concatenate([a, b]) for a, b in zip(v1, v2, strict=True))  # type: ignore[assignment]
        self.offset = mx.concatenate([o1, o2])
        self.left_padding = mx.concatenate([l1, l2])
        self._idx = top

    def extract(self, idx: int) -> QuantizedCache:
        """Sequence `idx` alone, as a single-sequence cache (for the prompt cache)."""
        cache = QuantizedCache(group_size=self.group_size, bits=self.bits)
        if self.keys is None or self.values is None:
            return cache
        start = int(self.left_padding[idx].item())
        cache.keys, cache.values = tree_map(
            lambda x: mx.contiguous(x[idx : idx + 1, :, start : self._idx]),
            (self.keys, self.values),
        )
        cache.offset = self._idx - start
        return cache

    @classmethod
    def merge(cls, caches: list[Any]) -> BatchQuantizedKVCache:
        """One batch cache from single-sequence quantized caches, left-padded to align."""
        first = caches[0]
        group, bits = first.group_size, first.bits
        lengths = [int(c.offset) for c in caches]
        longest = max(lengths)
        padding = [longest - n for n in lengths]
        if longest == 0:
            return cls([0] * len(caches), group, bits)
        filled = [c for c in caches if c.keys is not None and c.offset]
        ref_k, ref_v = filled[0].keys, filled[0].values
        heads, dtype = int(ref_k[0].shape[1]), ref_k[1].dtype
        k_dim, v_dim = _head_dim(ref_k, bits), _head_dim(ref_v, bits)
        keys = _zeros(len(caches), heads, longest, k_dim, bits, group, dtype)
        values = _zeros(len(caches), heads, longest, v_dim, bits, group, dtype)
        for i, (p, c) in enumerate(zip(padding, caches, strict=True)):
            if c.keys is None or not c.offset:
                continue
            for j in range(3):
                keys[j][i : i + 1, :, p : p + c.offset] = c.keys[j][..., : c.offset, :]
                values[j][i : i + 1, :, p : p + c.offset] = c.values[j][..., : c.offset, :]
        cache = cls(padding, group, bits)
        cache.keys, cache.values = keys, values
        cache.offset = cache.offset + longest
        cache._idx = longest
        return cache


def quantizable(caches: list[Any]) -> bool:
    """Whether a model's own caches are plain KV caches (what a quantized cache replaces);
    sliding-window, recurrent and other special caches keep their own kind."""
    return bool(caches) and all(type(c) is KVCache for c in caches)


def kv_settings(model: Any, kv_cache_type: str) -> tuple[int, int]:
    """(bits, group size) of the quantized KV cache for this model; (0, 0) keeps the float
    cache: f16 asked for, heads that no group size divides, or caches of another kind
    (sliding windows, recurrent state), each said in the log."""
    from mlx_lm.models.cache import make_prompt_cache

    bits = KV_CACHE_BITS.get(kv_cache_type, 0)
    if not bits:
        return 0, 0
    args = getattr(model, "args", None)
    heads = int(getattr(args, "num_attention_heads", 0) or 0)
    hidden = int(getattr(args, "hidden_size", 0) or 0)
    head_dim = int(getattr(args, "head_dim", 0) or (hidden // heads if heads else 0))
    group = kv_group_size(head_dim)
    if not group:
        log.warning("kv cache %s: heads of %d values cannot be quantized", kv_cache_type, head_dim)
        return 0, 0
    if not quantizable(make_prompt_cache(model)):
        log.warning("kv cache %s: this model's cache is not a plain KV cache; f16", kv_cache_type)
        return 0, 0
    log.info("kv cache %s: %d bits, groups of %d", kv_cache_type, bits, group)
    return bits, group
