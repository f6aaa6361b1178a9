"""A manifest read into a StoredModel: its settings, and the folder mlx-lm loads.

For a safetensors manifest that folder is made of links to its blobs (layout.py); for a
GGUF, the conversion cache once converted, its facts until then (gguf.py). What keeps a
model from running (missing blobs, a cloud model, a kind MLX cannot run, a Go template
with no Jinja equivalent) is recorded as `problem`: the model is still listed and shown,
and using it is a 4xx naming the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..architectures import unsupported_reason
from ..errors import StatusError
from ..gguf_meta import GGUFError
from ..templates import TemplateError, jinja_for_go_template
from . import layout
from .blobs import Blobs
from .gguf import GGUFCache
from .manifest import (
    ADAPTER,
    FILE,
    JSON,
    MODEL,
    TENSOR,
    Config,
    Layer,
    Manifest,
    decode_config,
    decode_manifest,
    hex_of,
)
from .modelinfo import cached_bytes, cached_json, chat_template, read_config
from .names import ModelName
from .spec import ModelSpec, read_spec

WEIGHT_TYPES = (TENSOR, JSON, FILE, MODEL, ADAPTER)
MAX_PLANS = 1024  # manifests whose link folders are remembered


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    manifest: ModelSpec  # what the manifest's layers and config say
    model_dir: Path  # what mlx-lm loads (for a GGUF not converted yet: its facts, see gguf.py)
    adapter_dir: Path | None
    digest: str  # sha256 of the manifest bytes, as Ollama reports it
    modified_at: datetime
    format: str = "safetensors"
    gguf: Path | None = None  # a GGUF model's blob (it converts before it first loads)
    converted: bool = True  # False: model_dir holds the GGUF's facts until it converts
    problem: str = ""  # why ollmlx cannot run this model ("" when it can)
    problem_status: int = 400
    layers: tuple[Layer, ...] = field(default=(), repr=False)
    config: Config = field(default_factory=Config, repr=False)
    draft_dir: Path | None = None  # a speculative-decoding draft (Modelfile DRAFT)

    def check_runnable(self) -> None:
        if self.problem:
            raise StatusError(self.problem, self.problem_status)


class Resolver:
    def __init__(self, blobs: Blobs, gguf: GGUFCache, folder: Path) -> None:
        self.blobs = blobs
        self.gguf = gguf
        self.models_folder = folder / "models"
        self.adapters_folder = folder / "adapters"
        self.drafts_folder = folder / "drafts"
        self._plans: dict[str, tuple[layout.Plan, layout.Plan | None]] = {}

    def load(self, name: ModelName, path: Path) -> StoredModel:
        data = path.read_bytes()
        stat = path.stat()
        manifest = decode_manifest(data)
        config = Config()
        if manifest.config.digest:
            raw = cached_bytes(self.blobs.path(manifest.config.digest))
            config = decode_config(raw) if raw is not None else Config()
        spec = read_spec(manifest, config, self.blobs.path)
        digest = hashlib.sha256(data).hexdigest()
        weights = self._weights(name, digest, manifest, config)
        problem, status = weights.problem, weights.status
        if spec.template is None and spec.go_template:
            problem = problem or self._go_template(name, spec, weights.model_dir)
        return StoredModel(
            name=name,
            manifest=spec,
            model_dir=weights.model_dir,
            adapter_dir=weights.adapter_dir,
            digest=digest,
            modified_at=datetime.fromtimestamp(stat.st_mtime, timezone.utc),
            format=weights.format,
            gguf=weights.gguf,
            converted=weights.converted,
            problem=problem,
            problem_status=status,
            layers=tuple(manifest.layers),
            config=config,
            draft_dir=self._draft_dir(manifest),
        )

    def _draft_dir(self, manifest: Manifest) -> Path | None:
        plan = layout.draft_plan(manifest.layers, self.blobs.path)
        if plan is None or any(not path.is_file() for path in plan.links.values()):
            return None
        return layout.build(self.drafts_folder, plan)

    def _go_template(self, name: ModelName, spec: ModelSpec, model_dir: Path) -> str:
        """Ollama's Go template, when the model has no Jinja one of its own: its Jinja
        equivalent from the family table (templates.py), or why there is none."""
        if chat_template(model_dir):
            return ""  # the model's own template (as Ollama mostly prefers it too)
        tokenizer = cached_json(model_dir / "tokenizer_config.json")
        bos = bool(tokenizer.get("add_bos_token")) if isinstance(tokenizer, dict) else False
        try:
            spec.template = jinja_for_go_template(spec.go_template or "", bos=bos).jinja
        except TemplateError as exc:
            return f'model "{name.display}": {exc}'
        return ""

    def _weights(
        self, name: ModelName, digest: str, manifest: Manifest, config: Config
    ) -> _Weights:
        none = self.models_folder / "none"
        if config.remote_host or config.remote_model:
            return _Weights(none, f"{name.display} is a cloud model; ollmlx runs local models only")
        ggufs = manifest.of_type(MODEL)
        missing = [
            layer.digest
            for layer in manifest.layers
            if layer.mediaType in WEIGHT_TYPES and not self.blobs.exists(layer.digest)
        ]
        if missing:
            message = f"model {name.display} is incomplete: blob {missing[0]} is missing"
            return _Weights(none, message, 500, format="gguf" if ggufs else "safetensors")
        plans = self.plans(digest, manifest)
        if plans[0].problem and not ggufs:
            return _Weights(none, plans[0].problem)
        adapter_dir = None
        if manifest.of_type(ADAPTER):
            if plans[1] is None:
                return _Weights(none, "GGUF (LoRA) adapters are not supported by ollmlx")
            adapter_dir = layout.build(self.adapters_folder, plans[1])
        if ggufs:
            return self._gguf_weights(ggufs[0], adapter_dir)
        if not manifest.of_type(TENSOR):
            return _Weights(none, f"{name.display} has no weights ollmlx can load")
        plan = plans[0]
        if "config.json" not in plan.links and "config.json" not in plan.files:
            kinds = "image generation or other non-text models"
            return _Weights(none, f"{name.display} has no config.json ({kinds} do not run)")
        model_dir = layout.build(self.models_folder, plan)
        reason = unsupported_reason(read_config(model_dir))
        return _Weights(model_dir, reason or "", adapter_dir=adapter_dir)

    def plans(self, digest: str, manifest: Manifest) -> tuple[layout.Plan, layout.Plan | None]:
        """The link folders of a manifest, worked out once (Ollama's tensor blobs have their
        headers read for quantization)."""
        plans = self._plans.get(digest)
        if plans is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            try:
                model = layout.model_plan(manifest.layers, self.blobs.path)
            except StatusError as exc:
                model = layout.Plan(problem=exc.message)
            plans = self._plans[digest] = (
                model,
                layout.adapter_plan(manifest.layers, self.blobs.path),
            )
        return plans

    def _gguf_weights(self, layer: Layer, adapter_dir: Path | None) -> _Weights:
        hex_digest = hex_of(layer.digest)
        converted = self.gguf.converted(hex_digest)
        blob = self.blobs.path(layer.digest)
        if (converted / "config.json").is_file():
            return _Weights(converted, format="gguf", gguf=blob, adapter_dir=adapter_dir)
        try:
            facts = self.gguf.facts_dir(hex_digest, blob)
        except GGUFError as exc:
            return _Weights(self.models_folder / "none", exc.message, format="gguf", gguf=blob)
        weights = _Weights(facts, format="gguf", gguf=blob, adapter_dir=adapter_dir)
        weights.converted = False
        return weights


@dataclass
class _Weights:
    model_dir: Path
    problem: str = ""
    status: int = 400
    format: str = "safetensors"
    gguf: Path | None = None
    adapter_dir: Path | None = None
    converted: bool = True
