"""The model store, in Ollama's format: manifests by name, content-addressed blobs.

Layout under the models folder (Ollama's, `OLLAMA_MODELS`):
    manifests/<host>/<namespace>/<model>/<tag>   a manifest (manifest.py), one per name
    blobs/sha256-<hex>                           layers: weights, configs, settings
    ollmlx/models/<key>/                         links mlx-lm loads a safetensors model from
    ollmlx/adapters/<key>/                       links to an mlx-lm adapter's files
    ollmlx/gguf/<hex>/                           a GGUF converted to MLX (and its facts)
    ollmlx/tmp/, ollmlx/pins/, ollmlx/store.lock writes in progress, uploads, the lock
Manifests are written whole (temporary file, then rename) under the store lock; a delete
removes the blobs no other manifest names (Ollama's RemoveLayers), then the folders under
ollmlx/ that no manifest maps to.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..errors import StatusError
from . import gc
from .blobs import Blobs
from .gguf import GGUFCache
from .lock import store_lock
from .manifest import (
    ADAPTER,
    CONFIG_MEDIA_TYPE,
    FILE,
    JSON,
    MODEL,
    TENSOR,
    Config,
    Layer,
    Manifest,
    decode_manifest,
    encode_config,
    encode_manifest,
    hex_of,
)
from .names import HF_HOSTS, ModelName, parse_name
from .resolve import Resolver, StoredModel
from .spec import ModelSpec, config_extras, copy_spec, spec_layers

log = logging.getLogger("ollmlx.store")


def _model_files(source: Path) -> list[Path]:
    """Regular files of a model directory, skipping hidden ones (.git, .cache)."""
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append(path)
    return files


def media_type_of(rel: str) -> str:
    if rel.endswith(".safetensors"):
        return TENSOR
    return JSON if rel.endswith(".json") else FILE


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests = root / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.blobs = Blobs(root)
        self.gguf = GGUFCache(root)
        self.resolver = Resolver(self.blobs, self.gguf, root / "ollmlx")

    # -- names and manifests ---------------------------------------------------------------

    def _path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.parts)

    def _candidates(self, text: str) -> builtins.list[ModelName]:
        name = parse_name(text)
        raw = text.strip().split("://", 1)[-1]
        names = [name]
        if raw.split("/", 1)[0].lower() in HF_HOSTS and raw.count("/") == 2:
            # Ollama keeps hf.co pulls under manifests/hf.co/...: look there too.
            names.append(ModelName("hf.co", name.namespace, name.model, name.tag))
        return names

    def _find(self, text: str) -> tuple[ModelName, Path] | None:
        """The manifest a name refers to: its lower-cased path (how ollmlx writes), else
        any spelling of it (Ollama keeps a name's case: types/model/name.go Filepath)."""
        candidates = self._candidates(text)
        for name in candidates:
            path = self._path(name)
            if path.is_file():
                return _name_of(self.manifests, path), path
        wanted = {name.parts for name in candidates}
        for path in self._manifest_paths():
            name = _name_of(self.manifests, path)
            if name.parts in wanted:
                return name, path
        return None

    def _manifest_paths(self) -> builtins.list[Path]:
        """Ollama's glob (manifest.Manifests): manifests/*/*/*/*, walked so that a folder
        another server removes meanwhile (an emptied model's) is skipped, not an error."""
        level = [self.manifests]
        for depth in range(4):
            found: builtins.list[Path] = []
            for folder in level:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    with os.scandir(folder) as entries:
                        for entry in entries:
                            if entry.name.startswith("."):
                                continue
                            wanted = entry.is_file() if depth == 3 else entry.is_dir()
                            if wanted:
                                found.append(Path(entry.path))
            level = found
        return sorted(level)

    def _read_manifests(self) -> Iterator[tuple[Path, bytes, Manifest]]:
        for path in self._manifest_paths():
            try:
                data = path.read_bytes()
                yield path, data, decode_manifest(data)
            except (OSError, StatusError):
                continue  # Ollama skips bad manifests too (Manifests(continueOnError))

    def get(self, text: str) -> StoredModel | None:
        found = self._find(text)
        return self._load(*found) if found else None

    def list(self) -> builtins.list[StoredModel]:
        models = []
        for path in self._manifest_paths():
            with contextlib.suppress(StatusError, OSError):
                models.append(self._load(_name_of(self.manifests, path), path))
        return models

    def _load(self, name: ModelName, path: Path) -> StoredModel:
        return self.resolver.load(name, path)

    # -- writing models --------------------------------------------------------------------

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary folder on the store's file system (hard links into blobs/ are free)."""
        folder = Path(tempfile.mkdtemp(prefix="scratch-", dir=self.blobs.tmp))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def add_dir(
        self,
        source: Path,
        known: Mapping[str, str] | None = None,
        prefix: str = "",
        created: set[str] | None = None,
    ) -> builtins.list[Layer]:
        """Every file of a model folder as a layer (tensor, json or file, named by its
        path), each blob hard-linked where possible and pinned until a manifest names it.
        `known` maps relative paths to sha256 digests already verified (a pull); the
        digests of blobs that did not exist before are added to `created`."""
        layers: builtins.list[Layer] = []
        try:
            for path in _model_files(source):
                rel = path.relative_to(source).as_posix()
                digest, size, new = self.blobs.put_file(path, (known or {}).get(rel))
                self.blobs.pin(digest)
                if new and created is not None:
                    created.add(digest)
                kind = ADAPTER if prefix == "adapter/" else media_type_of(rel)
                layers.append(Layer(kind, digest, size, name=prefix + rel))
        except BaseException:
            self.discard(layer.digest for layer in layers)  # never half a model
            raise
        return layers

    def add_adapter_dir(
        self, source: Path, created: set[str] | None = None
    ) -> builtins.list[Layer]:
        """An mlx-lm adapter folder as `adapter` layers named `adapter/<file>`."""
        return self.add_dir(source, prefix="adapter/", created=created)

    def add_draft_dir(self, source: Path, created: set[str] | None = None) -> builtins.list[Layer]:
        """A speculative-decoding draft model's folder, as Ollama keeps one beside its
        model: its files' layers named `draft/<file>`."""
        return self.add_dir(source, prefix="draft/", created=created)

    def add_gguf(self, path: Path, created: set[str] | None = None) -> Layer:
        digest, size, new = self.blobs.put_file(path)
        self.blobs.pin(digest)
        if new and created is not None:
            created.add(digest)
        return Layer(MODEL, digest, size, from_=path.name)

    def write(
        self,
        text: str,
        layers: builtins.list[Layer],
        spec: ModelSpec,
        config: Config | None = None,
        sources: Mapping[str, Path] | None = None,
    ) -> StoredModel:
        """Write the manifest of `text`: the weight layers given, the settings of `spec` as
        layers, and a config blob (`config` with spec's details and ollmlx's extras).
        `sources` (digest -> file) re-create a blob a concurrent delete took meanwhile."""
        data, digests, written = self.compose(layers, spec, config)
        with store_lock(self.root):
            path = self.commit(text, data, digests, {**written, **(sources or {})})
        return self._load(_name_of(self.manifests, path), path)

    def compose(
        self, layers: builtins.list[Layer], spec: ModelSpec, config: Config | None = None
    ) -> tuple[bytes, set[str], dict[str, bytes]]:
        """A manifest's bytes, the digests it names, and the settings and config blobs
        written for it (pinned until `commit`, which makes it visible)."""
        details = spec.details
        base = config or Config()
        config = msgspec.structs.replace(
            base,
            model_format=details.format,
            model_family=details.family,
            model_families=details.families,
            model_type=details.parameter_size,
            file_type=details.quantization_level,
            capabilities=spec.capabilities or base.capabilities,
            # What Ollama's CreateHandler writes (the config's "required by spec" fields).
            architecture=base.architecture or "amd64",
            os=base.os or "linux",
            ollmlx=config_extras(spec),
        )
        written: dict[str, bytes] = {}

        def put(data: bytes) -> tuple[str, int]:
            digest, size = self.blobs.put_bytes(data)
            self.blobs.pin(digest)  # the same bytes may be another model's, being deleted
            written[digest] = data
            return digest, size

        weight_layers = [layer for layer in layers if layer.mediaType not in _SETTINGS_TYPES]
        all_layers = [*weight_layers, *spec_layers(spec, put)]
        config_digest, config_size = put(encode_config(config))
        data = encode_manifest(Layer(CONFIG_MEDIA_TYPE, config_digest, config_size), all_layers)
        return data, {config_digest, *(layer.digest for layer in all_layers)}, written

    def commit(
        self, text: str, data: bytes, digests: set[str], sources: Mapping[str, Path | bytes]
    ) -> Path:
        """Under the store lock: the manifest of `text` becomes `data` (its blobs checked
        first and after), and the layers only the old manifest named go."""
        self._ensure_blobs(digests, sources)
        found = self._find(text)
        path = found[1] if found else self._path(parse_name(text))
        old = path.read_bytes() if found else None
        self._write_file(path, data)
        for digest in digests:
            self.blobs.unpin(digest)
        if old is not None and old != data:
            with contextlib.suppress(StatusError):
                self._remove_layers(decode_manifest(old))
        # An Ollama server (which takes no lock) may have removed a blob meanwhile.
        self._ensure_blobs(digests, sources)
        return path

    def _ensure_blobs(self, digests: set[str], sources: Mapping[str, Path | bytes]) -> None:
        for digest in digests:
            if self.blobs.touch(digest):
                continue
            source = sources.get(digest)
            if source is None:
                raise StatusError(f"blob {digest} not found", 400)
            log.warning("blob %s vanished while a model was written: adding it again", digest)
            if isinstance(source, bytes):
                got, _ = self.blobs.put_bytes(source)
            else:
                got, _, _ = self.blobs.put_file(source, hex_of(digest))
            if got != digest:
                raise StatusError(f"blob {digest} changed while the model was written", 500)

    def _write_file(self, path: Path, data: bytes) -> None:
        """Whole or not at all; the temporary file is outside manifests/ (Ollama's glob
        would read it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="manifest-", dir=self.blobs.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

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
        from .modelinfo import capabilities, describe

        spec = copy_spec(base.manifest)
        spec.source = base.name.display
        spec.repo = spec.revision = ""
        config = base.config
        layers = [layer for layer in base.layers if layer.mediaType != ADAPTER]
        created: set[str] = set()
        added: builtins.list[Layer] = []
        try:
            if weights is not None:
                added = self.add_dir(weights, created=created)
                layers = list(added)
                spec.details = describe(weights)
                spec.details.parent_model = base.name.display
                spec.capabilities = capabilities(weights)
                config = Config()
            if adapter is not None:
                adapter_layers = self.add_adapter_dir(adapter, created=created)
                added += adapter_layers
                layers += adapter_layers
            spec.info = {**spec.info, **(info or {})}
            return self.write(name, layers, spec, config, _sources(added, weights, adapter))
        except BaseException:
            self.discard(created)
            raise

    def copy(self, source: str, destination: str) -> StoredModel | None:
        """Ollama's CopyModel: the manifest's bytes under a second name, nothing else."""
        name = parse_name(destination)
        with store_lock(self.root):
            found = self._find(source)
            if found is None:
                return None
            existing = self._find(destination)
            path = existing[1] if existing else self._path(name)
            if path != found[1]:
                self._write_file(path, found[1].read_bytes())
        return self._load(_name_of(self.manifests, path), path)

    def delete(self, text: str) -> bool:
        with store_lock(self.root):
            found = self._find(text)
            if found is None:
                return False
            path = found[1]
            data = path.read_bytes()
            path.unlink()
            _prune_dirs(path.parent, self.manifests)
            with contextlib.suppress(StatusError):
                self._remove_layers(decode_manifest(data))
            self._collect_caches()
        return True

    def discard(self, digests: Any) -> None:
        """Blobs written for a model that was never created: gone unless a manifest
        names them (they may have been there before)."""
        wanted = set(digests)
        if not wanted:
            return
        with store_lock(self.root):
            for digest in wanted:
                self.blobs.unpin(digest)
            in_use = self._in_use()
            for digest in wanted - in_use:
                if not self.blobs.pinned(digest):
                    self.blobs.remove(digest)

    def _in_use(self) -> set[str]:
        return gc.in_use(self)

    def _remove_layers(self, manifest: Manifest) -> None:
        gc.remove_layers(self, manifest)

    def _collect_caches(self) -> None:
        gc.collect_caches(self)

    def collect_garbage(self, prune: bool = True) -> None:
        """At start: leftovers of writes that never finished, the caches no manifest uses,
        and (Ollama's PruneLayers) blobs no manifest names, older than an hour."""
        gc.collect_garbage(self, prune)


_SETTINGS_TYPES = frozenset(
    {
        "application/vnd.ollama.image.template",
        "application/vnd.ollama.image.prompt",
        "application/vnd.ollama.image.system",
        "application/vnd.ollama.image.params",
        "application/vnd.ollama.image.messages",
        "application/vnd.ollama.image.license",
        "application/vnd.ollmlx.image.jinja",
    }
)


def _sources(layers: list[Layer], *folders: Path | None) -> dict[str, Path]:
    out = {}
    for layer in layers:
        rel = layer.name.removeprefix("adapter/") if layer.mediaType == ADAPTER else layer.name
        for folder in folders:
            if folder is not None and (folder / rel).is_file():
                out[layer.digest] = folder / rel
                break
    return out


def _name_of(manifests: Path, path: Path) -> ModelName:
    host, namespace, model, tag = path.relative_to(manifests).parts
    return ModelName(host, namespace, model, tag)


def _prune_dirs(folder: Path, top: Path) -> None:
    """Empty manifest folders go (Ollama's PruneDirectory)."""
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
