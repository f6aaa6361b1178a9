"""The store's old layout (ollmlx's own JSON manifests, `weights/sha256-<listing>/` folders)
into Ollama's format, once, at start.

All or nothing: first every old model's files become blobs (hard links: no weight is
copied) and its new manifest is composed in memory; only when all succeeded are the
manifests replaced, and `weights/` removed. A failure on the way leaves the old layout as
it was (the blobs made for it are removed again) and says which model failed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..errors import StatusError
from ..protocol import Message
from .catalog import Store
from .lock import store_lock
from .modelinfo import Details, capabilities
from .names import parse_name
from .spec import ModelSpec

log = logging.getLogger("ollmlx.store")


class OldManifest(msgspec.Struct):
    """The manifest ollmlx wrote before it used Ollama's format."""

    weights: str
    source: str = ""
    repo: str = ""
    revision: str = ""
    adapter: str | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    system: str | None = None
    template: str | None = None  # Jinja
    license: list[str] = msgspec.field(default_factory=list)
    messages: list[Message] = msgspec.field(default_factory=list)
    details: Details = msgspec.field(default_factory=Details)
    size: int = 0
    info: dict[str, Any] = msgspec.field(default_factory=dict)


_decoder = msgspec.json.Decoder(OldManifest)


@dataclass
class _Planned:
    path: Path
    text: str  # the model's name
    data: bytes
    digests: set[str]
    sources: dict[str, Path | bytes]


def _old_manifests(store: Store) -> list[tuple[Path, OldManifest]]:
    found = []
    for path in sorted(store.manifests.glob("*/*/*/*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict) and "weights" in raw and "schemaVersion" not in raw:
            found.append((path, _decoder.decode(path.read_bytes())))
    return found


def _plan(store: Store, path: Path, old: OldManifest, created: set[str]) -> _Planned:
    weights = store.root / "weights"
    model_dir = weights / old.weights
    if not (model_dir / "config.json").is_file():
        raise StatusError(f"{model_dir} (the weights of {path}) is missing or incomplete", 500)
    layers = store.add_dir(model_dir, created=created)
    folders = [model_dir]
    if old.adapter:
        layers += store.add_adapter_dir(weights / old.adapter, created=created)
        folders.append(weights / old.adapter)
    spec = ModelSpec(
        source=old.source,
        repo=old.repo,
        revision=old.revision,
        parameters=old.parameters,
        system=old.system,
        template=old.template,
        license=old.license,
        messages=old.messages,
        details=old.details,
        info=old.info,
        capabilities=capabilities(model_dir, old.template),
    )
    data, digests, written = store.compose(layers, spec)
    sources: dict[str, Path | bytes] = dict(written)
    for layer in layers:
        rel = layer.name.removeprefix("adapter/")
        for folder in folders:
            if (folder / rel).is_file():
                sources[layer.digest] = folder / rel
    host, namespace, model, tag = path.relative_to(store.manifests).parts
    return _Planned(path, f"{host}/{namespace}/{model}:{tag}", data, digests, sources)


def migrate(store: Store) -> bool:
    """Migrate an old store in place; True if there was nothing to do or it succeeded."""
    olds = _old_manifests(store)
    weights = store.root / "weights"
    if not olds:
        if weights.is_dir() and not any(p.name.startswith("sha256-") for p in weights.iterdir()):
            shutil.rmtree(weights, ignore_errors=True)  # only staging leftovers
        return True
    started = time.monotonic()
    planned: list[_Planned] = []
    created: set[str] = set()
    try:
        for path, old in olds:
            planned.append(_plan(store, path, old, created))
    except (StatusError, OSError, ValueError) as exc:
        log.error(
            "migrating the store to Ollama's format failed at %s: %s; the old layout is "
            "left as it was",
            path,
            exc,
        )
        # What this run wrote (discard keeps whatever a manifest names).
        store.discard(created | {d for p in planned for d in p.digests})
        return False
    with store_lock(store.root):
        for item in planned:
            store.commit(item.text, item.data, item.digests, item.sources)
            log.info("migrated %s to Ollama's manifest format", _display(item.text))
    shutil.rmtree(weights, ignore_errors=True)
    log.info("store migrated (%d models) in %.1fs", len(planned), time.monotonic() - started)
    return True


def _display(text: str) -> str:
    return parse_name(text).display
