"""The disk tier of the prompt cache, in process: entries, prefixes, bounds, damage."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import KVCache
from ollmlx_worker.disk_cache import DiskPromptCache, _common


def kv(tokens: int) -> list[KVCache]:
    cache = KVCache()
    keys = mx.arange(tokens * 8, dtype=mx.float32).reshape(1, 1, tokens, 8)
    cache.update_and_fetch(keys, keys + 1)
    return [cache]


def test_common_prefix() -> None:
    assert _common([1, 2, 3], [1, 2, 4]) == 2
    assert _common([1, 2], [1, 2, 3]) == 2
    assert _common([], [1]) == 0
    assert _common(list(range(1000)), [*range(999), -1]) == 999


def test_a_stored_prefix_serves_longer_and_diverging_prompts(tmp_path: Path) -> None:
    disk = DiskPromptCache(tmp_path, 1 << 20, min_tokens=4)
    stored = list(range(10))
    disk.store(stored, kv(10))
    assert disk.longest_prefix([*range(10), 99]) == 10
    # A prompt that leaves the entry after 6 tokens gets those 6, trimmed from it.
    prompt = [*range(6), 50, 51]
    assert disk.longest_prefix(prompt) == 6
    (cache,) = disk.load(prompt, 6)
    assert cache.offset == 6
    keys = cache.state[0][:, :, : cache.offset]  # what attention sees of it
    assert mx.array_equal(keys, kv(10)[0].state[0][:, :, :6]).item()
    assert disk.longest_prefix([7, 8, 9, 1, 2]) == 0


def test_short_prefixes_are_not_worth_a_file(tmp_path: Path) -> None:
    disk = DiskPromptCache(tmp_path, 1 << 20, min_tokens=8)
    disk.store(list(range(5)), kv(5))
    assert len(disk) == 0 and not list(tmp_path.iterdir())


def test_entries_survive_a_new_instance_and_stay_within_the_bound(tmp_path: Path) -> None:
    disk = DiskPromptCache(tmp_path, 1 << 20, min_tokens=4)
    disk.store(list(range(100, 200)), kv(100))
    one = disk.nbytes
    again = DiskPromptCache(tmp_path, int(one * 2.5), min_tokens=4)
    assert again.longest_prefix(list(range(100, 150))) == 50
    for start in (1000, 2000, 3000):  # the least recently used go first
        again.store(list(range(start, start + 100)), kv(100))
    assert again.nbytes <= int(one * 2.5)
    assert len(again) == 2
    assert again.longest_prefix(list(range(100, 150))) == 0  # the oldest is gone


def test_a_damaged_file_is_forgotten(tmp_path: Path) -> None:
    disk = DiskPromptCache(tmp_path, 1 << 20, min_tokens=4)
    disk.store(list(range(20)), kv(20))
    (path,) = tmp_path.glob("*.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: the header still reads
    assert disk.load(list(range(20)), 20) is None
    assert not path.exists()
    (tmp_path / ".tmp-half.safetensors").write_bytes(b"x")
    DiskPromptCache(tmp_path, 1 << 20)  # a crash's leftovers are cleaned at start
    assert not (tmp_path / ".tmp-half.safetensors").exists()
