"""/api/create, once its request is checked (create_plan.py): the new model written.

Its weights are the base model's layers, a folder's files or uploaded blobs (linked, not
copied), a GGUF (converted to MLX before the manifest is written, with progress), or a
quantization's output; then adapters, then the request's settings. Status lines as
Ollama's CreateHandler writes them. Blobs written for a create that fails are removed
again: a failed create leaves no half model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StatusError
from ..gguf_meta import GGUFHeader, read_header
from ..store import layout
from ..store.blobs import holding
from ..store.catalog import Store, StoredModel, copy_spec, media_type_of
from ..store.gguf import human_number
from ..store.manifest import ADAPTER, FILE, JSON, MODEL, TENSOR, Config, Layer
from ..store.modelinfo import Details, capabilities, check_model_dir, describe
from ..store.names import parse_name
from ..store.spec import ModelSpec
from ..templates import looks_like_go_template
from .create_plan import CreatePlan, blob_path, check_quantizable
from .gguf import Converter, check
from .pull import Progress, Puller
from .quantize import convert

log = logging.getLogger("ollmlx.create")


def gguf_spec(head: GGUFHeader, source: str) -> ModelSpec:
    """What Ollama's createModel puts in the config of a GGUF model (its details)."""
    arch = head.architecture
    details = Details(
        format="gguf",
        family=arch,
        families=[arch],
        parameter_size=human_number(head.parameter_count),
        quantization_level=head.file_type,
    )
    return ModelSpec(source=source, details=details)


def _layer_status(layer: Layer, created: set[str]) -> str:
    new = layer.digest in created
    return f"{'creating new' if new else 'using existing'} layer {layer.digest}"


@dataclass
class _Draft:
    """The new model, as it takes shape."""

    layers: list[Layer]
    spec: ModelSpec
    config: Config | None = None
    sources: dict[str, Path] = field(default_factory=dict)
    weights_dir: Path | None = None  # a folder of the weights (to quantize from)


class Creator:
    def __init__(self, store: Store, puller: Puller, converter: Converter) -> None:
        self.store = store
        self.puller = puller
        self.converter = converter

    async def run(self, name: str, plan: CreatePlan) -> AsyncIterator[Progress | str]:
        """The status lines of the create, ending in `success`."""
        created: set[str] = set()
        try:
            # Its pins are its own: released once the manifest names the blobs, or before
            # the discard of a failed create (which then sees only other holders' pins).
            with holding(), self.store.scratch() as scratch:
                async for event in self._run(name, plan, created, scratch):
                    yield event
        except BaseException:
            await asyncio.to_thread(self.store.discard, created)
            raise

    async def _run(
        self, name: str, plan: CreatePlan, created: set[str], scratch: Path
    ) -> AsyncIterator[Progress | str]:
        if plan.pull:
            async for event in self.puller.pull(plan.pull):
                if event.status != "success":
                    yield event
            plan.base = self.store.get(plan.pull)
            if plan.base is None:
                raise StatusError(f"model '{plan.pull}' vanished after pulling it", 500)
            if plan.bits:
                check_quantizable(plan.base.model_dir)
        draft: _Draft | None = None
        if plan.base is not None:
            draft = self._from_base(plan.base)
            for layer in draft.layers if not plan.bits else ():  # quantize makes new ones
                yield f"using existing layer {layer.digest}"
            if plan.base.gguf is not None and not plan.base.converted:  # first use
                async for event in self.converter.events(plan.base.name.display, plan.base.gguf):
                    if event.status != "success":
                        yield event
        elif plan.source_dir is not None:
            layers = await asyncio.to_thread(self.store.add_dir, plan.source_dir, None, "", created)
            spec = ModelSpec(source=str(plan.source_dir), details=describe(plan.source_dir))
            spec.capabilities = capabilities(plan.source_dir)
            # The folder re-creates a blob that a concurrent delete took before the
            # manifest names it (another create's commit may have released the pin).
            sources = {layer.digest: plan.source_dir / layer.name for layer in layers}
            draft = _Draft(layers, spec, sources=sources, weights_dir=plan.source_dir)
            for layer in layers:
                yield _layer_status(layer, created)
        elif plan.files:
            draft = await asyncio.to_thread(self._from_files, plan.files, scratch)
            for layer in draft.layers if not plan.bits else ():
                yield f"using existing layer {layer.digest}"
        else:
            async for step in self._from_gguf(name, plan, created):
                if isinstance(step, _Draft):
                    draft = step
                else:
                    yield step
        assert draft is not None
        if plan.bits:
            async for status in self._quantize(plan, draft, created, scratch):
                yield status
        async for status in self._adapters(plan, draft, created):
            yield status
        async for status in self._draft_model(plan, draft, created):
            yield status
        _apply_request(draft.spec, plan)
        yield "writing manifest"
        write = self.store.write
        await asyncio.to_thread(write, name, draft.layers, draft.spec, draft.config, draft.sources)
        log.info("created %s", parse_name(name).display)
        yield "success"

    def _from_base(self, base: StoredModel) -> _Draft:
        spec = copy_spec(base.manifest)
        spec.source = base.name.display
        layers = [layer for layer in base.layers if layer.mediaType not in _SETTINGS]
        for layer in layers:
            self.store.blobs.pin(layer.digest)  # the base may be deleted meanwhile
        folder = base.model_dir if base.format == "safetensors" else None
        return _Draft(layers, spec, base.config, weights_dir=folder)

    def _from_files(self, files: dict[str, str], scratch: Path) -> _Draft:
        """Uploaded blobs as the layers they are (no copy), checked as a model folder."""
        for digest in files.values():
            self.store.blobs.pin(digest)  # its own hold: another create releases the upload's
        sizes = {rel: blob_path(self.store, d).stat().st_size for rel, d in files.items()}
        layers = [
            Layer(media_type_of(rel), digest, sizes[rel], name=rel)
            for rel, digest in sorted(files.items())
        ]
        plan = layout.Plan(links={rel: blob_path(self.store, d) for rel, d in files.items()})
        folder = layout.build(scratch / "files", plan)
        problem = check_model_dir(folder)
        if problem:
            raise StatusError(problem.replace(str(folder), "the files"), 400)
        spec = ModelSpec(source="files", details=describe(folder))
        spec.capabilities = capabilities(folder)
        return _Draft(layers, spec, weights_dir=folder)

    async def _from_gguf(
        self, name: str, plan: CreatePlan, created: set[str]
    ) -> AsyncIterator[Progress | str | _Draft]:
        """A GGUF file or uploaded blob: checked (400 before any work), stored, converted."""
        if plan.gguf_file is not None:
            await check(plan.gguf_file)
            yield "parsing GGUF"
            layer = await asyncio.to_thread(self.store.add_gguf, plan.gguf_file, created)
            source = str(plan.gguf_file)
            sources = {layer.digest: plan.gguf_file}
        else:
            assert plan.gguf_blob is not None
            rel, digest = plan.gguf_blob
            blob = blob_path(self.store, digest)
            await check(blob)
            yield "parsing GGUF"
            layer = Layer(MODEL, digest, blob.stat().st_size, from_=rel)
            source, sources = rel, {}
        yield _layer_status(layer, created)
        blob = self.store.blobs.path(layer.digest)
        head = await asyncio.to_thread(read_header, blob, array_limit=5)
        async for event in self.converter.events(parse_name(name).display, blob):
            if event.status != "success":
                yield event
        yield _Draft([layer], gguf_spec(head, source), sources=sources)

    async def _quantize(
        self, plan: CreatePlan, draft: _Draft, created: set[str], scratch: Path
    ) -> AsyncIterator[str]:
        """Convert in a child process into scratch space, then store the result."""
        source = draft.weights_dir
        assert source is not None and plan.req.quantize
        level = draft.spec.details.quantization_level or describe(source).quantization_level
        yield f"quantizing {level or 'F16'} model to {plan.req.quantize.upper()}"
        out = scratch / "quantized"
        async for status in convert(source, out, plan.bits):
            yield status
        layers = await asyncio.to_thread(self.store.add_dir, out, None, "", created)
        details = await asyncio.to_thread(describe, out)
        details.parent_model = draft.spec.source
        kept = [x for x in draft.layers if x.mediaType == ADAPTER or x.name.startswith("draft/")]
        draft.layers = [*layers, *kept]
        draft.spec.details, draft.spec.repo, draft.spec.revision = details, "", ""
        draft.spec.capabilities = capabilities(out)
        draft.config = None
        draft.sources = {layer.digest: out / layer.name for layer in layers}
        for layer in layers:
            yield _layer_status(layer, created)

    async def _draft_model(
        self, plan: CreatePlan, draft: _Draft, created: set[str]
    ) -> AsyncIterator[str]:
        """DRAFT: the draft model's files beside the model's, under `draft/` names (where
        Ollama keeps a draft): a folder's files added, a stored model's blobs reused."""
        layers: list[Layer] = []
        if plan.draft_dir is not None:
            layers = await asyncio.to_thread(self.store.add_draft_dir, plan.draft_dir, created)
            draft.sources.update({x.digest: plan.draft_dir / x.name[6:] for x in layers})
        elif plan.draft_base is not None:
            layers = [
                Layer(x.mediaType, x.digest, x.size, name="draft/" + x.name)
                for x in plan.draft_base.layers
                if x.mediaType in (TENSOR, JSON, FILE) and not x.name.startswith("draft/")
            ]
        if layers:
            draft.layers = [x for x in draft.layers if not x.name.startswith("draft/")] + layers
        for layer in layers:
            yield _layer_status(layer, created)

    async def _adapters(
        self, plan: CreatePlan, draft: _Draft, created: set[str]
    ) -> AsyncIterator[str]:
        layers: list[Layer] = []
        if plan.adapter_dir is not None:
            add = self.store.add_adapter_dir
            layers = await asyncio.to_thread(add, plan.adapter_dir, created)
            draft.sources.update({x.digest: plan.adapter_dir / x.name[8:] for x in layers})
        for rel, digest in sorted(plan.adapter_files.items()):
            size = blob_path(self.store, digest).stat().st_size
            layers.append(Layer(ADAPTER, digest, size, name=f"adapter/{rel}"))
        if layers:
            draft.layers = [x for x in draft.layers if x.mediaType != ADAPTER] + layers
        for layer in layers:
            yield _layer_status(layer, created)


_SETTINGS = frozenset(
    "application/vnd.ollama.image." + kind
    for kind in ("template", "prompt", "system", "params", "messages", "license")
) | {"application/vnd.ollmlx.image.jinja"}


def _apply_request(spec: ModelSpec, plan: CreatePlan) -> None:
    """What the request sets replaces what the base model had (Ollama's setTemplate etc.)."""
    req = plan.req
    spec.parameters = {**spec.parameters, **plan.parameters}
    if req.template is not None:
        # A Modelfile written for Ollama has a Go template; ollmlx's TEMPLATE is Jinja.
        if looks_like_go_template(req.template):
            spec.go_template, spec.template = req.template, None
        else:
            spec.template, spec.go_template = req.template or None, None
    if req.system is not None:
        spec.system = req.system or None
    if req.license:
        spec.license = [req.license] if isinstance(req.license, str) else list(req.license)
    if req.messages:
        spec.messages = list(req.messages)
