"""The quantized KV cache in `make bench`: bytes per token, greedy agreement with the
float cache, and decode speed against it, for f16 (the model's float cache), q8_0 and
q4_0, in one run.

Bytes are measured on the cache itself (in process, after a 512-token prefill); agreement
and speed through ollmlx (official client, real worker): one model created three times
with PARAMETER kv_cache_type, the same greedy prompts to each.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ollmlx.config import kv_bytes_per_element

from .served import Timed, serve

SHAPE = {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4}  # heads of 64
TYPES = ("f16", "q8_0", "q4_0")
PROMPTS = [
    "Tell me a long story about the river " * 30,  # a real context: ~240 tokens
    "Why does the robot paint at night? " * 30,
    "Describe the old library " * 40,
]


def build_model(tmp: Path) -> Path:
    from tests.tinymodel import build_tiny_model

    return build_tiny_model(tmp / "kv-model", vocab_size=2048, **SHAPE)


def cache_bytes_per_token(model_dir: Path, tokens: int = 512) -> dict[str, float]:
    """Bytes per token of each cache type, read off the cache after a prefill (a multiple
    of the caches' 256-token allocation step, so nothing is allocated ahead)."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache
    from ollmlx_worker.kvquant import fresh_caches

    model, _ = load(str(model_dir))
    prompt = mx.array([[7 + i % 500 for i in range(tokens)]])
    sizes = {}
    for kind, bits in zip(TYPES, (0, 8, 4), strict=True):
        cache = fresh_caches(len(model.layers), bits, 64) if bits else make_prompt_cache(model)
        model(prompt, cache=cache)
        mx.eval([c.state for c in cache])
        sizes[kind] = sum(c.nbytes for c in cache) / tokens
    return sizes


def measure(tmp: Path, tokens: int = 256, repeats: int = 3, say: Any = print) -> dict[str, Any]:
    model_dir = build_model(tmp)
    figures: dict[str, Any] = {"bytes_per_token": cache_bytes_per_token(model_dir)}
    with serve() as served:
        for kind in TYPES:
            served.create(f"kv-{kind}", f"FROM {model_dir}\nPARAMETER kv_cache_type {kind}\n")
            served.generate(f"kv-{kind}", "warm up", 4)
        answers = {
            kind: [served.generate(f"kv-{kind}", p, tokens) for p in PROMPTS] for kind in TYPES
        }
        reference = answers["f16"]
        figures["agreement"] = {
            kind: [_agree(a, b) for a, b in zip(reference, answers[kind], strict=True)]
            for kind in TYPES[1:]
        }
        samples: dict[str, dict[str, list[float]]] = {
            kind: {"decode_1": [], "wall_1": [], "aggregate_3": []} for kind in TYPES
        }
        for r in range(repeats):
            say(f"kv cache: round {r + 1} of {repeats}")
            for kind in TYPES:  # each round takes every type in turn: drift touches all
                one = served.generate(f"kv-{kind}", PROMPTS[r % len(PROMPTS)], 128)
                samples[kind]["decode_1"].append(one.decode_tps)
                samples[kind]["wall_1"].append(one.wall_tps)
                wall, count = served.concurrent(f"kv-{kind}", PROMPTS, 128)
                samples[kind]["aggregate_3"].append(count / wall)
    figures["speed"] = {
        kind: {name: statistics.median(v) for name, v in values.items()}
        for kind, values in samples.items()
    }
    figures["answer_tokens"] = tokens
    return figures


def _agree(reference: Timed, other: Timed) -> int:
    """Answer tokens until the first difference (contexts: the same prompt, then the answer)."""
    prompt = len(reference.context) - reference.tokens
    for i, (a, b) in enumerate(zip(reference.context, other.context, strict=False)):
        if a != b:
            return i - prompt
    return min(reference.tokens, other.tokens)


def report(figures: dict[str, Any]) -> str:
    sizes, speed = figures["bytes_per_token"], figures["speed"]
    rows = [
        "quantized KV cache (ollmlx, greedy; float32 model, heads of 64):",
        f"  {'':30}" + "".join(f"{k:>10}" for k in TYPES),
        f"  {'KV bytes per token':30}" + "".join(f"{sizes[k]:>10.0f}" for k in TYPES),
        f"  {'  of the float cache':30}"
        + "".join(f"{sizes[k] / sizes['f16']:>10.2f}" for k in TYPES),
        # A float16 model's cache is half of this float32 one, its scales too.
        f"  {'  of float16 (a float16 model)':30}"
        + "".join(f"{kv_bytes_per_element(k, 64) / 2:>10.2f}" for k in TYPES),
    ]
    for name, label in (
        ("decode_1", "decode tok/s, 1 stream"),
        ("wall_1", "wall tok/s, 1 stream"),
        ("aggregate_3", "aggregate tok/s, 3 streams"),
    ):
        rows.append(f"  {label:30}" + "".join(f"{speed[k][name]:>10.1f}" for k in TYPES))
        rows.append(
            f"  {'  of f16':30}"
            + "".join(f"{speed[k][name] / speed['f16'][name]:>10.2f}" for k in TYPES)
        )
    tokens = figures["answer_tokens"]
    for kind in TYPES[1:]:
        agree = figures["agreement"][kind]
        rows.append(
            f"  {kind}: greedy tokens equal to f16's before the first difference, of {tokens}: "
            + ", ".join(map(str, agree))
        )
    return "\n".join(rows)
