"""The prompt cache's disk tier: long prefixes' KV caches kept across worker restarts.

A KV cache that leaves the in-memory prompt cache (evicted, or when the worker stops) is
written here when its prefix is long enough to be worth it (system prompts, shared
documents); a later request that starts with such a prefix loads it instead of
prefilling it, also after the worker or the server restarted. One folder per model
(its weights' identity: the supervisor picks the folder), so a cache is never served for
another model; bounded in bytes, least recently used out first; every file is written
to a temporary name and renamed, so a crash leaves no half entry.

Runs on the engine thread only (the arrays are MLX's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kvquant import mergeable, saveable

log = logging.getLogger("ollmlx.worker")

MIN_TOKENS = 256  # shorter prefixes prefill faster than they load
MAX_ENTRIES = 256  # the index (every entry's tokens) stays small in memory
SUFFIX = ".safetensors"


def prefix_key(tokens: list[int]) -> str:
    return hashlib.sha256(json.dumps(tokens).encode()).hexdigest()


@dataclass
class _Entry:
    path: Path
    tokens: list[int]
    key: str
    nbytes: int
    used: float


def _common(a: list[int], b: list[int]) -> int:
    """The length of the common prefix: a binary search of C-speed slice compares, since
    every request asks this of every entry."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class DiskPromptCache:
    def __init__(self, folder: Path, max_bytes: int, min_tokens: int = MIN_TOKENS) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        folder.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, _Entry] = {}
        for path in folder.glob(f"*{SUFFIX}"):
            entry = self._read_entry(path)
            if entry is not None:
                self._entries[entry.key] = entry
        for stale in folder.glob(".tmp-*"):  # a write that a crash interrupted
            stale.unlink(missing_ok=True)
        log.info(
            "prompt cache on disk: %d entries, %d MiB in %s",
            len(self._entries),
            self.nbytes >> 20,
            folder,
        )

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def longest_prefix(self, tokens: list[int]) -> int:
        """How many leading tokens of `tokens` the best stored entry covers (0: none)."""
        return self._best(tokens)[1]

    def _best(self, tokens: list[int]) -> tuple[_Entry | None, int]:
        best, length = None, 0
        for entry in self._entries.values():
            # A stored prefix may be longer than this prompt (a finished answer after
            # it): it serves the part they share, trimmed.
            shared = min(_common(entry.tokens, tokens), len(tokens))
            if shared > length:
                best, length = entry, shared
        return (best, length) if length >= self.min_tokens else (None, 0)

    def load(self, tokens: list[int], length: int) -> Any:
        """The KV cache of `tokens[:length]` (`length` from `longest_prefix`), or None."""
        from mlx_lm.models.cache import can_trim_prompt_cache, load_prompt_cache, trim_prompt_cache

        entry, shared = self._best(tokens)
        if entry is None or shared < length:
            return None
        try:
            cache = [mergeable(c) for c in load_prompt_cache(str(entry.path))]
        except Exception:  # a damaged file: forget it, prefill instead
            log.exception("could not load a prompt cache from %s", entry.path)
            self._remove(entry)
            return None
        extra = len(entry.tokens) - length
        if extra:
            if not can_trim_prompt_cache(cache):
                return None
            trim_prompt_cache(cache, extra)
        entry.used = time.time()
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # its last use survives a restart (LRU by mtime)
        log.info("prompt cache: %d tokens loaded from disk", length)
        return cache

    def store(self, tokens: list[int], cache: Any) -> None:
        """Write the KV cache of `tokens` if it is long and not stored yet; then keep the
        tier within its bound by dropping the least recently used entries."""
        if len(tokens) < self.min_tokens or cache is None:
            return
        key = prefix_key(tokens)
        if key in self._entries:
            return
        from mlx_lm.models.cache import save_prompt_cache

        path = self.folder / f"{key}{SUFFIX}"
        tmp = self.folder / f".tmp-{key}{SUFFIX}"
        try:
            saved = [saveable(c) for c in cache]
            save_prompt_cache(str(tmp), saved, {"tokens": json.dumps(tokens), "key": key})
            os.replace(tmp, path)
        except Exception:  # a full disk must not end the request that evicted it
            log.exception("could not write a prompt cache to %s", path)
            tmp.unlink(missing_ok=True)
            return
        entry = _Entry(path, list(tokens), key, path.stat().st_size, time.time())
        self._entries[key] = entry
        log.debug(
            "prompt cache: %d tokens written to disk (%d KiB)", len(tokens), entry.nbytes >> 10
        )
        while (self.nbytes > self.max_bytes or len(self._entries) > MAX_ENTRIES) and self._entries:
            self._remove(min(self._entries.values(), key=lambda e: e.used))

    def _remove(self, entry: _Entry) -> None:
        self._entries.pop(entry.key, None)
        entry.path.unlink(missing_ok=True)

    def _read_entry(self, path: Path) -> _Entry | None:
        try:
            meta = _safetensors_metadata(path)
            tokens, key = json.loads(meta["tokens"]), str(meta["key"])
            stat = path.stat()
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            return None
        if path.name != f"{key}{SUFFIX}" or prefix_key(tokens) != key:
            return None
        return _Entry(path, tokens, key, stat.st_size, stat.st_mtime)


def spilling_cache(
    max_size: int, max_bytes: int, disk: DiskPromptCache | None, key: Any = None
) -> Any:
    """mlx-lm's in-memory LRUPromptCache, whose evicted entries go to the disk tier.

    LRUPromptCache evicts inline in insert_cache and trim_to, through its trie's `pop`
    (mlx-lm 0.32, pinned to a minor version): wrapping that one method catches every
    entry that leaves memory. Shorter prefixes dropped because a longer entry covers
    them (`pop_prefixes`) are not spilled: the longer one serves them. With `key`, only
    that model's entries spill (a draft model's caches share the memory tier)."""
    from mlx_lm.models.cache import LRUPromptCache

    cache = LRUPromptCache(max_size=max_size, max_bytes=max_bytes)
    if disk is None:
        return cache
    pop = cache._trie.pop

    def spill(model: Any, tokens: list[int]) -> Any:
        entry = pop(model, tokens)
        if key is None or model == key:
            disk.store(list(tokens), entry.prompt_cache)
        return entry

    cache._trie.pop = spill
    return cache


def cached_entries(cache: Any, key: Any = None) -> list[tuple[list[int], Any]]:
    """(tokens, KV cache) of every entry of an in-memory LRUPromptCache (of `key`'s)."""
    found = []
    for lru in cache._lru._lrus.values():
        for model, tokens in lru:
            if key is not None and model != key:
                continue
            entry = cache._trie.get(model, tokens)
            if entry is not None:
                found.append((list(tokens), entry.prompt_cache))
    return found


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The user metadata of a prompt-cache file, read from its header (no arrays)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size <= 1 << 26:
            raise ValueError("bad header")
        header = json.loads(f.read(size))
    meta = header.get("__metadata__", {})
    # save_prompt_cache flattens (metadata, classes, scalars) with tree keys "0.<name>".
    return {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("0.")}
