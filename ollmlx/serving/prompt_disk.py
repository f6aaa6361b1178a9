"""Where each model's prompt-cache disk tier lives, and its cleanup when the model goes.

One folder per model weights (and adapter): a KV cache depends on them only, so copies
of a model share theirs, and a cache can never be served for another model. A folder
whose weights no model uses any more is removed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..config import KV_CACHE_BITS
from ..store.catalog import StoredModel

log = logging.getLogger("ollmlx.serving")

FOLDER = Path("ollmlx") / "prompt-cache"


def cache_key(model_dir: Path, adapter_dir: Path | None, kv_cache_type: str = "f16") -> str:
    identity = f"{model_dir.resolve()}\0{adapter_dir.resolve() if adapter_dir else ''}"
    if kv_cache_type != "f16":  # a quantized cache is another cache of the same weights
        identity += f"\0{kv_cache_type}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def folder_for(
    root: Path, model_dir: Path, adapter_dir: Path | None, kv_cache_type: str = "f16"
) -> Path:
    return root / FOLDER / cache_key(model_dir, adapter_dir, kv_cache_type)


def collect(root: Path, models: Iterable[StoredModel]) -> None:
    """Remove the folders of weights that no model uses any more."""
    base = root / FOLDER
    if not base.is_dir():
        return
    used = {cache_key(m.model_dir, m.adapter_dir, t) for m in models for t in KV_CACHE_BITS}
    for folder in base.iterdir():
        if folder.is_dir() and folder.name not in used:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed the disk prompt cache of a model that is gone (%s)", folder.name)
