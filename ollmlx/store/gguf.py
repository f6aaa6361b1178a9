"""GGUF models (Ollama's `model` layer) in the store: their conversion cache and facts.

A GGUF converts to MLX once, on first use, into `<store>/ollmlx/gguf/<hex>/model` (hex: the
GGUF blob's digest), never listed as a model and removed when no manifest names that GGUF.
Until then `<hex>/facts` holds what the routes ask of a model before it runs (context
length, layer and head counts for the memory estimate, the chat template for capabilities),
written from the GGUF header here without MLX. The conversion itself is a child process
(acquire/gguf.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..gguf_meta import GGUFArray, GGUFHeader, read_header

FACTS_ARRAY_LIMIT = 5  # Ollama's /api/show empties arrays longer than this (getModelData)


def human_number(count: int) -> str:
    """format.HumanNumber: Ollama's parameter size of a GGUF model (3.2B, 494.03M, 20K)."""
    for unit, scale, decimals in (("B", 10**9, 1), ("M", 10**6, 2)):
        if count >= scale:
            number = count / scale
            return (
                f"{number:.0f}{unit}" if number == int(number) else f"{number:.{decimals}f}{unit}"
            )
    return f"{count / 1000:.0f}K" if count >= 1000 else str(count)


@functools.lru_cache(maxsize=64)
def _header(path: str, stamp: tuple[int, int, int]) -> GGUFHeader:
    return read_header(path, array_limit=FACTS_ARRAY_LIMIT)


def header(path: Path) -> GGUFHeader:
    """The header of a GGUF blob (long arrays left unread), read once per file version."""
    st = os.stat(path)
    return _header(str(path), (st.st_mtime_ns, st.st_size, st.st_ino))


def _number(value: Any) -> int:
    if isinstance(value, list):  # per-layer values (e.g. head counts): the largest
        value = max((v for v in value if isinstance(v, int)), default=0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def model_info(head: GGUFHeader) -> dict[str, Any]:
    """/api/show's model_info for a GGUF: its metadata, as Ollama shows it (GetModelInfo
    deletes general.name and tokenizer.chat_template; arrays longer than 5 come back [])."""
    info: dict[str, Any] = {}
    for key, value in head.metadata.items():
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        info[key] = [] if isinstance(value, GGUFArray | list) and _len(value) > 5 else value
    info["general.parameter_count"] = head.parameter_count
    return info


def _len(value: GGUFArray | list[Any]) -> int:
    return value.length if isinstance(value, GGUFArray) else len(value)


def facts(head: GGUFHeader) -> tuple[dict[str, Any], dict[str, Any]]:
    """A config.json and tokenizer_config.json with what routes read before conversion."""
    arch = head.architecture

    def value(key: str) -> int:
        return _number(head.arch_value(key, 0))

    config: dict[str, Any] = {
        "model_type": arch,
        "max_position_embeddings": value("context_length"),
        "num_hidden_layers": value("block_count"),
        "hidden_size": value("embedding_length"),
        "intermediate_size": value("feed_forward_length"),
        "num_attention_heads": value("attention.head_count"),
        "num_key_value_heads": value("attention.head_count_kv") or value("attention.head_count"),
    }
    if key_length := value("attention.key_length"):
        config["head_dim"] = key_length
    tokens = head.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, GGUFArray | list):
        config["vocab_size"] = _len(tokens)
    tokenizer: dict[str, Any] = {"add_bos_token": head.add_bos}
    if head.chat_template:
        tokenizer["chat_template"] = head.chat_template
    return config, tokenizer


class GGUFCache:
    """`<store>/ollmlx/gguf/`: one folder per GGUF digest."""

    def __init__(self, root: Path) -> None:
        self.root = root / "ollmlx" / "gguf"
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, hex_digest: str) -> Path:
        return self.root / hex_digest

    def converted(self, hex_digest: str) -> Path:
        return self.folder(hex_digest) / "model"

    def lock_path(self, hex_digest: str) -> Path:
        return self.folder(hex_digest) / ".lock"

    def facts_dir(self, hex_digest: str, blob: Path) -> Path:
        """The facts folder of a GGUF, written from its header the first time."""
        folder = self.folder(hex_digest) / "facts"
        if (folder / "config.json").is_file():
            return folder
        config, tokenizer = facts(header(blob))
        tmp = self.folder(hex_digest) / f".facts-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(config))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer))
        try:
            os.rename(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another server wrote it first
        return folder

    def remove_unused(self, keep: set[str]) -> None:
        """Folders of GGUFs no manifest names, unless a conversion holds their lock."""
        for entry in self.root.iterdir():
            if entry.name in keep or not entry.is_dir():
                continue
            with contextlib.suppress(OSError), _try_lock(entry / ".lock") as free:
                if free:
                    shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _try_lock(path: Path) -> Any:
    if not path.exists():
        yield True
        return
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
