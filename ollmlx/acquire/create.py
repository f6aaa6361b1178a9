"""/api/create: what a new model is made of, checked before any answer, then written.

A model comes FROM an existing model (pulled first when only the hub has it), a local
folder, a local GGUF file, or `files` uploaded as blobs (`relpath -> digest`: a
safetensors folder or one GGUF, as Ollama's clients send them); `adapters` the same way
(a path or uploaded files of an mlx-lm adapter); `quantize` runs the conversion child.
Status lines as Ollama's CreateHandler writes them. Blobs written for a create that fails
are removed again: a failed create leaves no half model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from ..errors import StatusError
from ..gguf_meta import GGUFHeader, read_header
from ..options import check_option
from ..protocol import Message
from ..store import layout
from ..store.aliases import resolve
from ..store.catalog import Store, StoredModel, copy_spec, media_type_of
from ..store.files import open_regular
from ..store.gguf import human_number
from ..store.manifest import ADAPTER, MODEL, Config, Layer, hex_of
from ..store.modelfile import parse_modelfile
from ..store.modelinfo import Details, capabilities, check_model_dir, describe, read_config
from ..store.names import parse_name
from ..store.spec import ModelSpec
from ..templates import looks_like_go_template
from .gguf import Converter, check
from .pull import Progress, Puller
from .quantize import convert, quant_bits

log = logging.getLogger("ollmlx.create")


class CreateRequest(msgspec.Struct, rename={"from_": "from"}):
    model: str = ""
    name: str = ""  # deprecated spelling of `model`
    from_: str = ""
    modelfile: str = ""  # older clients send the Modelfile text itself
    files: dict[str, str] | None = None  # relpath -> sha256 digest of an uploaded blob
    adapters: dict[str, str] | None = None  # relpath -> digest, or (ollmlx's CLI) a path
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    stream: bool | None = None


@dataclass
class CreatePlan:
    """What a create will write, checked before the first status line."""

    req: CreateRequest
    base: StoredModel | None = None
    pull: str = ""  # a FROM model to pull from Hugging Face first
    source_dir: Path | None = None  # FROM a local folder
    gguf_file: Path | None = None  # FROM a local GGUF file
    files: dict[str, str] = field(default_factory=dict)  # uploaded safetensors files
    gguf_blob: tuple[str, str] | None = None  # an uploaded GGUF: (relpath, digest)
    adapter_dir: Path | None = None
    adapter_files: dict[str, str] = field(default_factory=dict)
    bits: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)


def _valid_path(rel: str) -> bool:
    """Go's fs.ValidPath, as CreateHandler checks each file name."""
    if rel == ".":
        return True
    return bool(rel) and not rel.startswith("/") and layout.safe_relpath(rel) == rel


def _is_gguf(path: Path) -> bool:
    with open_regular(path) as f:
        return f.read(4) == b"GGUF"


def _merge_modelfile(req: CreateRequest) -> None:
    """Fold an old client's `modelfile` text into the request; the request's fields win."""
    parsed = parse_modelfile(req.modelfile)
    req.from_ = req.from_ or parsed.from_
    req.template = req.template if req.template is not None else parsed.template
    req.system = req.system if req.system is not None else parsed.system
    req.license = req.license or parsed.license or None
    req.parameters = {**parsed.parameters, **(req.parameters or {})}
    req.messages = req.messages or parsed.messages or None
    if parsed.adapter:
        req.adapters = {"adapter": parsed.adapter}


def _check_digests(files: dict[str, str]) -> None:
    for rel, digest in files.items():
        if not _valid_path(rel):
            raise StatusError("file path must be relative", 400)  # errFilePath
        hex_of(digest)  # "invalid digest format"


def _blob(store: Store, digest: str) -> Path:
    path = store.blobs.path(digest)
    if not path.is_file():
        raise StatusError(f'blob "{digest}" not found: upload it first (POST /api/blobs)', 400)
    return path


def plan_create(store: Store, req: CreateRequest) -> CreatePlan:
    plan = CreatePlan(req)
    if req.modelfile:
        _merge_modelfile(req)
    files = dict(req.files or {})
    _check_digests(files)
    if not req.from_ and not files:
        raise StatusError("neither 'from' or 'files' was specified", 400)
    if req.quantize:
        plan.bits = quant_bits(req.quantize)
    if files:
        _plan_files(store, plan, files)
    elif _is_path(req.from_):
        _plan_path(plan, Path(req.from_).expanduser())
    else:
        plan.base = store.get(req.from_)
        if plan.base is None:
            if not _pullable(req.from_):
                raise StatusError(f"model '{req.from_}' not found", 404)
            plan.pull = req.from_
        else:
            plan.base.check_runnable()
    if plan.bits:
        if plan.gguf_file or plan.gguf_blob or (plan.base and plan.base.format == "gguf"):
            raise StatusError("ollmlx quantizes safetensors models only, not GGUF files", 400)
        if plan.source_dir is not None:
            _check_quantizable(plan.source_dir)
        elif plan.base is not None:
            _check_quantizable(plan.base.model_dir)
    _plan_adapters(store, plan)
    try:
        plan.parameters = {k: check_option(k, v) for k, v in (req.parameters or {}).items()}
    except (StatusError, KeyError) as exc:
        raise StatusError(str(exc).strip('"'), 400) from None
    return plan


def _is_path(text: str) -> bool:
    return Path(text).expanduser().is_absolute() or text.startswith((".", "~"))


def _plan_path(plan: CreatePlan, path: Path) -> None:
    if path.is_file():
        if not _is_gguf(path):
            raise StatusError(f"{path} is neither a model directory nor a GGUF file", 400)
        read_header(path, array_limit=0)  # a broken file is a 400 now, not a failed job
        plan.gguf_file = path.resolve()
        return
    problem = check_model_dir(path)
    if problem:
        raise StatusError(problem, 400)
    plan.source_dir = path.resolve()


def _plan_files(store: Store, plan: CreatePlan, files: dict[str, str]) -> None:
    """detectModelTypeFromFiles: a GGUF by name or by its magic, else safetensors."""
    paths = {rel: _blob(store, digest) for rel, digest in files.items()}
    ggufs = [rel for rel in files if rel.endswith(".gguf") or _is_gguf(paths[rel])]
    if ggufs:
        if len(ggufs) > 1:
            raise StatusError(
                "a model of several GGUF files (split or with a projector) "
                "is not supported by ollmlx",
                400,
            )
        plan.gguf_blob = (ggufs[0], files[ggufs[0]])
        read_header(paths[ggufs[0]], array_limit=0)
        return
    if not any(rel.endswith(".safetensors") for rel in files):
        raise StatusError("unknown type", 400)  # errUnknownType
    if "config.json" not in files:
        raise StatusError("the files have no config.json", 400)
    plan.files = files


def _plan_adapters(store: Store, plan: CreatePlan) -> None:
    adapters = dict(plan.req.adapters or {})
    if not adapters:
        return
    digests = {rel: v for rel, v in adapters.items() if v.startswith("sha256")}
    if digests:
        _check_digests(digests)
        paths = {rel: _blob(store, digest) for rel, digest in digests.items()}
        if any(rel.endswith(".gguf") or _is_gguf(p) for rel, p in paths.items()):
            raise StatusError("GGUF (LoRA) adapters are not supported by ollmlx", 400)
        names = {PurePosixPath(rel).name for rel in digests}
        if "adapter_config.json" not in names or not any(n.endswith(".safetensors") for n in names):
            raise StatusError(
                "an adapter needs adapter_config.json and adapters.safetensors (mlx-lm's format)",
                400,
            )
        plan.adapter_files = digests
        return
    if len(adapters) > 1:
        raise StatusError("only one adapter is currently supported", 400)
    path = Path(next(iter(adapters.values()))).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        raise StatusError("GGUF (LoRA) adapters are not supported by ollmlx", 400)
    if not (path / "adapter_config.json").is_file():
        raise StatusError(f"adapter {path} has no adapter_config.json", 400)
    plan.adapter_dir = path.resolve()


def _pullable(text: str) -> bool:
    try:
        resolve(parse_name(text))
    except StatusError:
        return False
    return True


def _check_quantizable(model_dir: Path) -> None:
    config = read_config(model_dir)
    if config.get("quantization") or config.get("quantization_config"):
        raise StatusError("quantization is only supported for F16 and F32 models", 400)


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
            with self.store.scratch() as scratch:
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
                _check_quantizable(plan.base.model_dir)
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
            draft = _Draft(layers, spec, weights_dir=plan.source_dir)
            for layer in layers:
                yield _layer_status(layer, created)
        elif plan.files:
            draft = await asyncio.to_thread(self._from_files, plan.files, scratch)
            for layer in draft.layers if not plan.bits else ():
                yield f"using existing layer {layer.digest}"
        else:
            async for event in self._from_gguf(name, plan, created):
                if isinstance(event, _Draft):
                    draft = event
                else:
                    yield event
        assert draft is not None
        if plan.bits:
            async for status in self._quantize(plan, draft, created, scratch):
                yield status
        async for status in self._adapters(plan, draft, created):
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
        folder = base.model_dir if base.format == "safetensors" else None
        return _Draft(layers, spec, base.config, weights_dir=folder)

    def _from_files(self, files: dict[str, str], scratch: Path) -> _Draft:
        """Uploaded blobs as the layers they are (no copy), checked as a model folder."""
        layers = [
            Layer(media_type_of(rel), digest, _blob(self.store, digest).stat().st_size, name=rel)
            for rel, digest in sorted(files.items())
        ]
        plan = layout.Plan(links={rel: _blob(self.store, d) for rel, d in files.items()})
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
            blob = _blob(self.store, digest)
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
        draft.layers = [*layers, *(x for x in draft.layers if x.mediaType == ADAPTER)]
        draft.spec.details, draft.spec.repo, draft.spec.revision = details, "", ""
        draft.spec.capabilities = capabilities(out)
        draft.config = None
        draft.sources = {layer.digest: out / layer.name for layer in layers}
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
            size = _blob(self.store, digest).stat().st_size
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
