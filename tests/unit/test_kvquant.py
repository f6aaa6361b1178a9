"""The batched quantized KV cache against mlx-lm's single-sequence one, and its bytes."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import QuantizedKVCache
from ollmlx_worker.kvquant import BatchQuantizedKVCache, QuantizedCache

from ollmlx.config import kv_bytes_per_element

HEADS, DIM = 2, 64


def _kv(tokens: int, seed: int) -> tuple[mx.array, mx.array]:
    mx.random.seed(seed)
    return mx.random.normal((1, HEADS, tokens, DIM)), mx.random.normal((1, HEADS, tokens, DIM))


def _single(tokens: int, seed: int, bits: int = 8) -> QuantizedCache:
    cache = QuantizedCache(group_size=64, bits=bits)
    cache.update_and_fetch(*_kv(tokens, seed))
    return cache


def _same(a: QuantizedKVCache, b: QuantizedKVCache) -> bool:
    ka, va = a.keys_and_values() if hasattr(a, "keys_and_values") else (a.keys, a.values)
    kb, vb = b.keys_and_values()
    return all(mx.array_equal(x, y).item() for x, y in zip((*ka, *va), (*kb, *vb), strict=True))


@pytest.mark.parametrize("bits", [8, 4])
def test_merge_update_and_extract_equal_single_sequence_caches(bits: int) -> None:
    lengths = (5, 12, 1)
    singles = [_single(n, seed, bits) for seed, n in enumerate(lengths)]
    batch = QuantizedCache.merge(singles)
    assert isinstance(batch, BatchQuantizedKVCache) and batch.size() == 12
    step_k, step_v = mx.random.normal((3, HEADS, 1, DIM)), mx.random.normal((3, HEADS, 1, DIM))
    batch.update_and_fetch(step_k, step_v)
    for i, single in enumerate(singles):
        single.update_and_fetch(step_k[i : i + 1], step_v[i : i + 1])
        extracted = batch.extract(i)
        assert extracted.offset == lengths[i] + 1
        assert _same(extracted, single)


def test_filter_extend_and_trim_keep_each_sequence() -> None:
    singles = [_single(n, seed) for seed, n in enumerate((3, 9, 6))]
    batch = QuantizedCache.merge(singles[:2])
    batch.extend(QuantizedCache.merge(singles[2:]))
    assert [batch.extract(i).offset for i in range(3)] == [3, 9, 6]
    batch.filter([0, 2])  # the longest goes: padding none of the rest needs is dropped
    assert batch.size() == 6
    assert _same(batch.extract(0), singles[0]) and _same(batch.extract(1), singles[2])
    assert batch.trim(2) == 2
    assert [batch.extract(i).offset for i in range(2)] == [1, 4]


def test_cache_bytes_per_token_are_the_quantized_size() -> None:
    tokens = 40
    # Packed bits plus a float32 scale and bias per 64 values: 1.125 and 0.625 bytes an
    # element, against 2 for float16 (with float16 scales: 1.0625 and 0.5625).
    for bits, ratio in ((8, 1.125 / 2), (4, 0.625 / 2)):
        cache = _single(tokens, 0, bits).keys  # allocated in steps of 256 tokens
        assert cache is not None
        per_token = sum(x.nbytes for x in cache) * 2 / 256  # keys and values
        assert per_token == HEADS * DIM * 2 * kv_bytes_per_element(
            {8: "q8_0", 4: "q4_0"}[bits], DIM, float_bytes=4
        )
        assert per_token / (HEADS * DIM * 2 * 2) == ratio


def test_batched_generation_with_a_quantized_cache_equals_single_streams(
    kv_model_dir: Path,
) -> None:
    from mlx_lm import load
    from mlx_lm.generate import BatchGenerator, generate_step
    from ollmlx_worker.kvquant import fresh_caches

    model, tokenizer = load(str(kv_model_dir))
    prompts = [tokenizer.encode("the cat runs over the river " * n) for n in (1, 4, 2)]
    alone = []
    for prompt in prompts:
        cache = fresh_caches(len(model.layers), 4, 64)
        steps = generate_step(mx.array(prompt), model, prompt_cache=cache, max_tokens=24)
        alone.append([int(token) for token, _ in steps])
    generator = BatchGenerator(model, stop_tokens=[], prefill_step_size=512)
    caches = [fresh_caches(len(model.layers), 4, 64) for _ in prompts]
    uids = generator.insert(prompts, max_tokens=[24] * 3, caches=caches)
    together: dict[int, list[int]] = {uid: [] for uid in uids}
    while any(len(t) < 24 for t in together.values()):
        for response in generator.next()[1]:
            together[response.uid].append(response.token)
    assert [together[uid] for uid in uids] == alone


def test_quantized_caches_go_to_disk_and_come_back_batchable(tmp_path: Path) -> None:
    from ollmlx_worker.disk_cache import DiskPromptCache

    disk = DiskPromptCache(tmp_path, 1 << 20, min_tokens=4)
    stored = [_single(10, 0), _single(10, 1)]  # two layers
    disk.store(list(range(10)), stored)
    loaded = disk.load([*range(10), 99], 10)
    assert loaded is not None and all(type(c) is QuantizedCache for c in loaded)
    assert all(_same(a, b) for a, b in zip(loaded, stored, strict=True))
    assert isinstance(QuantizedCache.merge([loaded[0], stored[0]]), BatchQuantizedKVCache)
