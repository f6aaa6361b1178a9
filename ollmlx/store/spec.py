"""What a manifest says about a model besides its weights: the settings layers and config.

`read_spec` turns Ollama's `template`, `system`, `params`, `messages` and `license` layers
(and ollmlx's Jinja layer and config extras) into one ModelSpec, the shape the routes use;
`spec_layers` writes a ModelSpec back as layers, in Ollama's encodings (server/create.go
setTemplate, setSystem, setParameters, setMessages, setLicense).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from ..protocol import Message
from .manifest import (
    JINJA,
    LICENSE,
    MESSAGES,
    MODEL,
    PARAMS,
    PROMPT,
    SYSTEM,
    TEMPLATE,
    Config,
    Layer,
    Manifest,
    encode_messages,
    encode_params,
)
from .modelinfo import Details, cached_bytes

MAX_SETTINGS_BYTES = 16 << 20  # a template or system prompt bigger than this is no prompt


class ModelSpec(msgspec.Struct):
    """A model's settings and facts as its manifest gives them (the shape routes use)."""

    source: str = ""  # what FROM named, or where the weights came from
    repo: str = ""  # the Hugging Face repo a pull came from
    revision: str = ""  # and its commit
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    system: str | None = None
    template: str | None = None  # Jinja the worker renders with (None: the model's own)
    go_template: str | None = None  # Ollama's Go template layer, as written
    license: list[str] = msgspec.field(default_factory=list)
    messages: list[Message] = msgspec.field(default_factory=list)
    details: Details = msgspec.field(default_factory=Details)
    size: int = 0
    info: dict[str, Any] = msgspec.field(default_factory=dict)  # shown in model_info
    capabilities: list[str] = msgspec.field(default_factory=list)  # from the config


_messages = msgspec.json.Decoder(list[Message])


def _text(path: Path) -> str | None:
    data = cached_bytes(path)
    return data.decode(errors="replace") if data is not None else None


def read_spec(manifest: Manifest, config: Config, blob_path: Callable[[str], Path]) -> ModelSpec:
    extras = config.ollmlx or {}
    spec = ModelSpec(
        source=str(extras.get("source") or ""),
        repo=str(extras.get("repo") or ""),
        revision=str(extras.get("revision") or ""),
        info=dict(extras.get("info") or {}),
        size=manifest.size,
        capabilities=list(config.capabilities or []),
    )
    parent = str(extras.get("parent_model") or "")
    for layer in manifest.layers:
        kind = layer.mediaType
        if kind not in (TEMPLATE, PROMPT, SYSTEM, PARAMS, MESSAGES, LICENSE, JINJA):
            parent = parent or (layer.from_ if kind == MODEL else "")
            continue
        text = _text(blob_path(layer.digest))
        if text is None:
            continue
        if kind in (TEMPLATE, PROMPT):
            spec.go_template = text
        elif kind == JINJA:
            spec.template = text
        elif kind == SYSTEM:
            spec.system = text
        elif kind == LICENSE:
            spec.license.append(text)
        elif kind == PARAMS:
            with contextlib.suppress(ValueError, msgspec.DecodeError):
                params = json.loads(text)
                if isinstance(params, dict):
                    spec.parameters = params
        elif kind == MESSAGES:
            with contextlib.suppress(ValueError, msgspec.DecodeError):
                spec.messages = _messages.decode(text)
    spec.details = Details(
        parent_model=parent,
        format=config.model_format or ("gguf" if manifest.of_type(MODEL) else ""),
        family=config.model_family,
        families=config.model_families or None,
        parameter_size=config.model_type,
        quantization_level=config.file_type,
    )
    return spec


def spec_layers(spec: ModelSpec, put: Callable[[bytes], tuple[str, int]]) -> list[Layer]:
    """The settings layers of a new manifest, each a blob written through `put`."""
    layers = []

    def add(media_type: str, data: bytes) -> None:
        digest, size = put(data)
        layers.append(Layer(media_type, digest, size))

    if spec.go_template:
        add(TEMPLATE, spec.go_template.encode())
    if spec.template:
        add(JINJA, spec.template.encode())
    if spec.system:
        add(SYSTEM, spec.system.encode())
    for text in spec.license:
        if text:
            add(LICENSE, text.encode())
    if spec.parameters:
        add(PARAMS, encode_params(spec.parameters))
    if spec.messages:
        add(MESSAGES, encode_messages([msgspec.to_builtins(m) for m in spec.messages]))
    return layers


def config_extras(spec: ModelSpec) -> dict[str, Any] | None:
    """What only ollmlx reads, under the config's `ollmlx` key."""
    extras = {
        "source": spec.source,
        "repo": spec.repo,
        "revision": spec.revision,
        "parent_model": spec.details.parent_model,
        "info": spec.info,
    }
    kept = {k: v for k, v in extras.items() if v}
    return kept or None


def copy_spec(spec: ModelSpec) -> ModelSpec:
    """A ModelSpec to change without touching the original (its dicts and lists too)."""
    return msgspec.convert(msgspec.to_builtins(spec), ModelSpec)
