"""How the engine loads and steps a text model: the step driver it is given.

`SingleProcess` is what a worker always did: load with mlx-lm, batch on this process's
`BatchRunner`. A rank 0 of a distributed group gets `lockstep.LockstepDriver` instead,
which loads a shard and makes every step happen on every rank at once. The engine calls
only these methods (all on its own thread, the one that touches MLX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SingleProcess:
    # Idle, the engine waits for work this long before stepping anyway (None: forever).
    idle_timeout: float | None = None
    # One rank's KV cache holds 1/kv_divisor of each token's keys and values.
    kv_divisor: int = 1
    # Bytes of weights each rank holds (rank 0 first); empty for one process.
    rank_memory: list[int] = []
    embeds = True  # /embed runs the model alone, between steps: not in a group

    def load(self, model_dir: Path, adapter: str | None) -> tuple[Any, Any]:
        from mlx_lm import load

        model, tokenizer = load(str(model_dir), adapter_path=adapter)[:2]
        return model, tokenizer

    def runner(
        self,
        model: Any,
        tokenizer: Any,
        cache_bytes: int,
        disk: Any = None,
        draft: Any = None,
        num_draft: int = 4,
        kv_bits: int = 0,
        kv_group: int = 64,
    ) -> Any:
        from .batching import BatchRunner

        return BatchRunner(
            model,
            tokenizer,
            cache_bytes,
            disk=disk,
            draft=draft,
            num_draft=num_draft,
            kv_bits=kv_bits,
            kv_group=kv_group,
        )

    def close(self) -> None:
        """The engine stops: nothing else to tell."""
