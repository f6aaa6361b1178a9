"""What the store removes: blobs no manifest names (Ollama's RemoveLayers and, at start,
PruneLayers), and the folders under ollmlx/ that no manifest maps to. Called with the
store lock held, except where it takes it itself."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING

from ..errors import StatusError
from . import layout
from .lock import store_lock
from .manifest import MODEL, Manifest, hex_of

if TYPE_CHECKING:
    from .catalog import Store

log = logging.getLogger("ollmlx.store")

PRUNE_GRACE = 3600.0  # Ollama's layerPruneGracePeriod: newer blobs may await their manifest


def in_use(store: Store) -> set[str]:
    """Every digest a readable manifest names (Ollama skips bad manifests too)."""
    used: set[str] = set()
    for _, _, manifest in store._read_manifests():
        used |= manifest.digests()
    return used


def remove_layers(store: Store, manifest: Manifest) -> None:
    """Ollama's RemoveLayers: the blobs of `manifest` that no other manifest names
    (nor an upload or a create that awaits its manifest: a pin)."""
    for digest in manifest.digests() - in_use(store):
        if not store.blobs.pinned(digest):
            store.blobs.remove(digest)


def collect_caches(store: Store) -> None:
    """Link folders and GGUF conversions that no manifest maps to any more."""
    models, adapters, drafts, ggufs = set(), set(), set(), set()
    for _, data, manifest in store._read_manifests():
        for layer in manifest.of_type(MODEL):
            ggufs.add(hex_of(layer.digest))
        with contextlib.suppress(StatusError, OSError):
            plan, adapter = store.resolver.plans(hashlib.sha256(data).hexdigest(), manifest)
            models.add(plan.key())
            if adapter is not None:
                adapters.add(adapter.key())
            draft = layout.draft_plan(manifest.layers, store.blobs.path)
            if draft is not None:
                drafts.add(draft.key())
    layout.remove_unused(store.resolver.models_folder, models)
    layout.remove_unused(store.resolver.adapters_folder, adapters)
    layout.remove_unused(store.resolver.drafts_folder, drafts)
    store.gguf.remove_unused(ggufs)


def collect_garbage(store: Store, prune: bool) -> None:
    store.blobs.clean()
    with store_lock(store.root):
        if prune:
            used = in_use(store)
            now = time.time()
            for blob in store.blobs.root.glob("sha256-*"):
                digest = "sha256:" + blob.name.removeprefix("sha256-")
                with contextlib.suppress(OSError, StatusError):
                    old = now - blob.stat().st_mtime > PRUNE_GRACE
                    if digest not in used and old and not store.blobs.pinned(digest):
                        blob.unlink()
                        log.info("removed unused blob %s", digest)
        collect_caches(store)
