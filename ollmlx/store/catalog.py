"""The model store: manifests by name, weight directories by content digest.

Layout under the models directory:
    manifests/<host>/<namespace>/<model>/<tag>   JSON manifest (one per name)
    weights/sha256-<hex>/                        a model directory, installed atomically
Copies share weights; a weights directory goes when no manifest names it any more.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from ..protocol import Message
from .files import open_regular
from .modelinfo import Details, describe
from .names import ModelName, parse_name


class Manifest(msgspec.Struct, omit_defaults=True):
    weights: str  # "sha256-<hex>" directory under weights/
    source: str = ""  # what FROM named
    repo: str = ""  # the Hugging Face repo a pulled model came from
    revision: str = ""  # and its commit
    adapter: str | None = None  # another weights digest: an mlx-lm LoRA adapter
    draft: str | None = None  # another weights digest: the draft model (Modelfile DRAFT)
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    license: list[str] = msgspec.field(default_factory=list)
    messages: list[Message] = msgspec.field(default_factory=list)
    details: Details = msgspec.field(default_factory=Details)
    size: int = 0
    # Facts shown in /api/show's model_info, e.g. how a fine-tuned model was trained.
    info: dict[str, Any] = msgspec.field(default_factory=dict)


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    manifest: Manifest
    model_dir: Path
    adapter_dir: Path | None
    digest: str  # sha256 of the manifest bytes, as Ollama reports it
    modified_at: datetime
    draft_dir: Path | None = None  # the draft model's weights (speculative decoding)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Manifest)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(source: Path) -> list[Path]:
    """Regular files of a model directory, skipping hidden ones (.git, .cache)."""
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append(path)
    return files


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests = root / "manifests"
        self.weights = root / "weights"
        for folder in (self.manifests, self.weights):
            folder.mkdir(parents=True, exist_ok=True)

    def _manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.parts)

    def get(self, text: str) -> StoredModel | None:
        name = parse_name(text)
        return self._load(name, self._manifest_path(name))

    def list(self) -> list[StoredModel]:
        models = []
        for path in sorted(self.manifests.glob("*/*/*/*")):
            if path.is_file() and not path.name.startswith("."):
                host, namespace, model, tag = path.relative_to(self.manifests).parts
                stored = self._load(ModelName(host, namespace, model, tag), path)
                if stored:
                    models.append(stored)
        return models

    def _load(self, name: ModelName, path: Path) -> StoredModel | None:
        try:
            data = path.read_bytes()
            stat = path.stat()
        except OSError:
            return None
        manifest = _decoder.decode(data)
        model_dir = self.weights / manifest.weights
        if not model_dir.is_dir():
            return None  # never serve a model whose weights are missing
        return StoredModel(
            name=name,
            manifest=manifest,
            model_dir=model_dir,
            adapter_dir=self.weights / manifest.adapter if manifest.adapter else None,
            digest=hashlib.sha256(data).hexdigest(),
            modified_at=datetime.fromtimestamp(stat.st_mtime, timezone.utc),
            draft_dir=self.weights / manifest.draft if manifest.draft else None,
        )

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary folder on the store's filesystem (links into weights/ are free)."""
        folder = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.weights))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def install_weights(
        self, source: Path, known: Mapping[str, str] | None = None
    ) -> tuple[str, int]:
        """Copy a model directory into the store; return (digest, bytes).

        Files are hashed, linked or copied into a temporary directory, then renamed into
        place in one step: a half-copied model is never visible. `known` maps relative
        paths to sha256 hex digests already verified (a pull), so they are not read twice.
        """
        files = _model_files(source)
        listing = hashlib.sha256()
        size = 0
        for path in files:
            rel = path.relative_to(source).as_posix()
            sha = (known or {}).get(rel) or _hash_file(path)
            listing.update(f"{rel}\0{sha}\n".encode())
            size += path.stat().st_size
        digest = f"sha256-{listing.hexdigest()}"
        target = self.weights / digest
        if target.is_dir():
            return digest, size
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.weights))
        try:
            for path in files:
                dest = staging / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, dest)  # same filesystem: no bytes copied
                except OSError:
                    shutil.copy2(path, dest)
            try:
                staging.rename(target)
            except OSError:
                if not target.is_dir():  # a concurrent install of the same content won
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return digest, size

    def write(self, text: str, manifest: Manifest) -> StoredModel:
        name = parse_name(text)
        path = self._manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(_encoder.encode(manifest))
        os.replace(tmp, path)
        stored = self._load(name, path)
        assert stored is not None
        return stored

    def install_derived(
        self,
        name: str,
        base: StoredModel,
        *,
        weights: Path | None = None,
        adapter: Path | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> StoredModel:
        """A new model `name` made from `base` (a fine-tune): `weights` replaces the base's
        weights (a full or fused model directory), or `adapter` (an mlx-lm adapter
        directory) is put on top of them; template, system, parameters, messages and
        license carry over; `info` is shown in /api/show. Atomic like every install."""
        fields = {f: getattr(base.manifest, f) for f in base.manifest.__struct_fields__}
        manifest = Manifest(**fields)
        manifest.source = base.name.display
        manifest.repo = manifest.revision = ""
        if weights is not None:
            manifest.weights, manifest.size = self.install_weights(weights)
            manifest.adapter = None
            manifest.details = describe(weights)
            manifest.details.parent_model = base.name.display
        if adapter is not None:
            manifest.adapter, _ = self.install_weights(adapter)
        manifest.info = {**manifest.info, **(info or {})}
        return self.write(name, manifest)

    def copy(self, source: str, destination: str) -> StoredModel | None:
        stored = self.get(source)
        if stored is None:
            return None
        return self.write(destination, stored.manifest)

    def delete(self, text: str) -> bool:
        name = parse_name(text)
        path = self._manifest_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
        self.collect_garbage()
        return True

    def collect_garbage(self) -> None:
        """Remove weight directories that no manifest names, and stale staging folders."""
        used = set()
        for stored in self.list():
            used.add(stored.manifest.weights)
            if stored.manifest.adapter:
                used.add(stored.manifest.adapter)
            if stored.manifest.draft:
                used.add(stored.manifest.draft)
        for folder in self.weights.iterdir():
            stale_staging = folder.name.startswith(".staging-") and (
                time.time() - folder.stat().st_mtime > 3600
            )
            if (folder.name.startswith("sha256-") and folder.name not in used) or stale_staging:
                shutil.rmtree(folder, ignore_errors=True)
