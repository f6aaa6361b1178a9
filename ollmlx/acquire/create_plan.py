"""/api/create's request, checked before any answer: what the new model is made of.

A model comes FROM an existing model (pulled first when only the hub has it), a local
folder, a local GGUF file, or `files` uploaded as blobs (`relpath -> digest`: a
safetensors folder or one GGUF, as Ollama's clients send them, server/create.go
detectModelTypeFromFiles); `adapters` the same way (a path, or the uploaded files of an
mlx-lm adapter). Every refusal here is a 4xx before the first status line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from ..errors import StatusError
from ..gguf_meta import read_header
from ..options import check_parameter
from ..protocol import Message
from ..store import layout
from ..store.aliases import resolve
from ..store.catalog import Store, StoredModel
from ..store.files import open_regular
from ..store.manifest import hex_of
from ..store.modelfile import parse_modelfile
from ..store.modelinfo import cached_json, check_model_dir, read_config
from ..store.names import parse_name
from .quantize import quant_bits


class CreateRequest(msgspec.Struct, rename={"from_": "from"}):
    model: str = ""
    name: str = ""  # deprecated spelling of `model`
    from_: str = ""
    modelfile: str = ""  # older clients send the Modelfile text itself
    files: dict[str, str] | None = None  # relpath -> sha256 digest of an uploaded blob
    adapters: dict[str, str] | None = None  # relpath -> digest, or (ollmlx's CLI) a path
    # ollmlx: the DRAFT model, a stored model's name or a model folder on this machine
    # (Ollama's client uploads it as blobs, `draft_files`).
    draft: str | None = None
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
    draft_dir: Path | None = None  # a DRAFT model folder to add
    draft_base: StoredModel | None = None  # or a stored model, whose blobs it reuses
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
    req.draft = req.draft or parsed.draft or None


def _check_digests(files: dict[str, str]) -> None:
    for rel, digest in files.items():
        if not _valid_path(rel):
            raise StatusError("file path must be relative", 400)  # errFilePath
        hex_of(digest)  # "invalid digest format"


def blob_path(store: Store, digest: str) -> Path:
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
    if not req.from_:  # CreateHandler: `from` first, `files` only without it
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
            check_quantizable(plan.source_dir)
        elif plan.base is not None:
            check_quantizable(plan.base.model_dir)
    _plan_adapters(store, plan)
    if req.draft:
        _plan_draft(store, plan, req.draft)
    try:
        plan.parameters = {k: check_parameter(k, v) for k, v in (req.parameters or {}).items()}
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
    paths = {rel: blob_path(store, digest) for rel, digest in files.items()}
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
        paths = {rel: blob_path(store, digest) for rel, digest in digests.items()}
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


def _plan_draft(store: Store, plan: CreatePlan, draft: str) -> None:
    """DRAFT: a model folder or a stored model, whose vocabulary must be the target's (the
    target verifies the draft's token ids)."""
    if _is_path(draft):
        source = Path(draft).expanduser()
        problem = check_model_dir(source)
        if problem:
            raise StatusError(f"draft: {problem}", 400)
        plan.draft_dir = draft_dir = source.resolve()
    else:
        stored = store.get(draft)
        if stored is None:
            raise StatusError(f"draft model '{draft}' not found", 404)
        if stored.format != "safetensors":
            raise StatusError(f"draft model '{draft}' must be a safetensors model", 400)
        stored.check_runnable()
        plan.draft_base, draft_dir = stored, stored.model_dir
    target = plan.source_dir or (plan.base.model_dir if plan.base else None)
    if target is not None and _vocabulary(target) != _vocabulary(draft_dir):
        raise StatusError("the draft model's vocabulary does not match the model's", 400)


def _vocabulary(model_dir: Path) -> Any:
    """What a draft must share with its model: the tokenizer's vocabulary (a model's
    vocab_size may be padded past it, as Qwen2.5 7B's is and 0.5B's is not)."""
    tokenizer = cached_json(model_dir / "tokenizer.json")
    model = tokenizer.get("model", {}) if isinstance(tokenizer, dict) else {}
    vocab = model.get("vocab") if isinstance(model, dict) else None
    return vocab if vocab else read_config(model_dir).get("vocab_size")


def _pullable(text: str) -> bool:
    try:
        resolve(parse_name(text))
    except StatusError:
        return False
    return True


def check_quantizable(model_dir: Path) -> None:
    config = read_config(model_dir)
    if config.get("quantization") or config.get("quantization_config"):
        raise StatusError("quantization is only supported for F16 and F32 models", 400)
