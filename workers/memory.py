"""A worker's memory: how much of MLX's freed buffers it keeps, what a token of KV cache
costs, and what the OS has free for the engine's admission check."""

from __future__ import annotations

import time
from typing import Any

# Seconds a reading of the OS's free memory stands for requests that need at most an
# eighth of it: psutil takes 0.2 ms to read it on Linux (it parses /proc/meminfo).
FREE_MEMORY_FRESH = 1.0


def mlx_cache_limit(weights: int) -> int:
    """Bytes of freed buffers MLX may keep: enough to reuse a decode step's allocations
    (a quarter of the weights, within 64 MiB to 2 GiB), far from MLX's default (all)."""
    return min(max(weights // 4, 64 << 20), 2 << 30)


class FreeMemory:
    """The OS's free memory, read again only when an answer could depend on it."""

    def __init__(self) -> None:
        self._reading = (-FREE_MEMORY_FRESH, 0)  # (when, bytes free)

    def for_request(self, needed: int) -> int:
        """A recent reading where `needed` is at most an eighth of it, else (a large
        request, or one that may be refused) a fresh one."""
        import psutil

        now = time.monotonic()
        when, free = self._reading
        if now - when > FREE_MEMORY_FRESH or 8 * needed > free:
            free = int(psutil.virtual_memory().available)
            self._reading = (now, free)
        return free


def kv_bytes_per_token(model: Any, bits: int = 0, group: int = 0) -> int:
    """KV cache bytes that one token of context costs (keys and values, every layer);
    `bits` and `group`: a quantized cache's (packed values, a scale and a bias a group)."""
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
    size = floats[0] if floats else 2
    per_element = bits / 8 + 2 * size / group if bits else size
    return int(2 * layers * kv_heads * head_dim * per_element)
