"""Ollama's manifest and config shapes, and JSON written byte for byte as Go writes it.

From Ollama's manifest/manifest.go (Manifest, WriteManifest), manifest/layer.go (Layer) and
types/model/config.go (ConfigV2). A manifest ollmlx writes is one Ollama's parser reads: same
field names and order, same media types. Facts only ollmlx needs (the Hugging Face repo a
pull came from, a fine-tune's facts) go under the config's `ollmlx` key, which Go's decoder
ignores; a Jinja template goes in a layer of ollmlx's own media type, which Ollama's
GetModel (server/images.go) skips.
"""

from __future__ import annotations

import decimal
import math
import re
from typing import Any

import msgspec

from ..errors import StatusError

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
_OLLAMA = "application/vnd.ollama.image."
MODEL = _OLLAMA + "model"  # a GGUF file
TENSOR = _OLLAMA + "tensor"  # safetensors: a tensor, a group of them, or (ollmlx) a whole file
JSON = _OLLAMA + "json"  # a config file of a safetensors model, by path (`name`)
TEMPLATE = _OLLAMA + "template"  # Ollama's Go template
PROMPT = _OLLAMA + "prompt"  # the old name of `template`
SYSTEM = _OLLAMA + "system"
PARAMS = _OLLAMA + "params"
MESSAGES = _OLLAMA + "messages"
LICENSE = _OLLAMA + "license"
ADAPTER = _OLLAMA + "adapter"
PROJECTOR = _OLLAMA + "projector"
DRAFT = _OLLAMA + "draft"
# ollmlx's own: Ollama ignores layers of media types it does not know.
JINJA = "application/vnd.ollmlx.image.jinja"  # a Jinja chat template (TEMPLATE in ollmlx)
FILE = "application/vnd.ollmlx.image.file"  # another model file by path: tokenizer.model, .txt

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


class Layer(msgspec.Struct, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    from_: str = msgspec.field(default="", name="from")
    name: str = ""


class Manifest(msgspec.Struct):
    schemaVersion: int
    mediaType: str
    config: Layer
    layers: list[Layer] = msgspec.field(default_factory=list)

    @property
    def size(self) -> int:
        """Ollama's Manifest.Size: every layer and the config."""
        return sum(layer.size for layer in self.layers) + self.config.size

    def digests(self) -> set[str]:
        return {d for d in (layer.digest for layer in [*self.layers, self.config]) if d}

    def of_type(self, *media_types: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.mediaType in media_types]


class Draft(msgspec.Struct, omit_defaults=True):
    model_format: str = ""
    architecture: str = ""
    tensor_prefix: str = ""
    config: str = ""


class Config(msgspec.Struct, omit_defaults=True):
    """ConfigV2 as Go decodes it, plus the `ollmlx` key Go ignores. Every field has a
    default: configs written by other tools (or older Ollamas) omit some."""

    model_format: str = ""
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""  # shown as the parameter size
    file_type: str = ""  # shown as the quantization level
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    remote_host: str = ""
    remote_model: str = ""
    capabilities: list[str] | None = None
    context_length: int = 0
    embedding_length: int = 0
    base_name: str = ""
    draft: Draft | None = None
    architecture: str = ""
    os: str = ""
    ollmlx: dict[str, Any] | None = None


_manifest_decoder = msgspec.json.Decoder(Manifest)
_config_decoder = msgspec.json.Decoder(Config)


def hex_of(digest: str) -> str:
    """The hex of `sha256:<hex>` (or Ollama's file-name form `sha256-<hex>`); 400 otherwise."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise StatusError("invalid digest format", 400)  # manifest.ErrInvalidDigestFormat
    return match[1].lower()


def decode_manifest(data: bytes) -> Manifest:
    try:
        manifest = _manifest_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StatusError(f"invalid manifest: {exc}", 500) from None
    for layer in [*manifest.layers, manifest.config]:
        if layer.digest:
            hex_of(layer.digest)  # a manifest never names a path outside blobs/
    return manifest


def decode_config(data: bytes) -> Config:
    try:
        return _config_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Config()  # Ollama shows such a model with empty details, and so do we


def encode_manifest(config: Layer, layers: list[Layer]) -> bytes:
    """WriteManifest: schemaVersion 2, the docker media type, json.Encoder's newline."""
    obj = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": _layer_obj(config),
        "layers": [_layer_obj(layer) for layer in layers],
    }
    return go_json(obj) + b"\n"


def _layer_obj(layer: Layer) -> dict[str, Any]:
    obj: dict[str, Any] = {"mediaType": layer.mediaType, "digest": layer.digest, "size": layer.size}
    if layer.from_:
        obj["from"] = layer.from_
    if layer.name:
        obj["name"] = layer.name
    return obj


# The order of ConfigV2's fields, and which are omitempty (types/model/config.go).
_CONFIG_FIELDS: tuple[tuple[str, bool], ...] = (
    ("model_format", False),
    ("model_family", False),
    ("model_families", False),
    ("model_type", False),
    ("file_type", False),
    ("renderer", True),
    ("parser", True),
    ("requires", True),
    ("remote_host", True),
    ("remote_model", True),
    ("capabilities", True),
    ("context_length", True),
    ("embedding_length", True),
    ("base_name", True),
    ("draft", True),
    ("architecture", False),
    ("os", False),
    ("ollmlx", True),
)


def encode_config(config: Config) -> bytes:
    """createConfigLayer: json.NewEncoder(...).Encode(config), newline included."""
    obj: dict[str, Any] = {}
    for field, omitempty in _CONFIG_FIELDS:
        value = getattr(config, field)
        if isinstance(value, msgspec.Struct):
            value = msgspec.to_builtins(value)
        if omitempty and not value:
            continue
        obj[field] = value
    return go_json(obj) + b"\n"


def encode_params(params: dict[str, Any]) -> bytes:
    """setParameters: a Go map, so its keys sorted."""
    return go_json(dict(sorted(params.items()))) + b"\n"


def encode_messages(messages: list[dict[str, Any]]) -> bytes:
    """setMessages: api.Message structs (role and content always, the rest omitempty)."""
    order = ("role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id")
    objs = []
    for message in messages:
        obj = {"role": message.get("role", ""), "content": message.get("content", "")}
        obj.update({k: message[k] for k in order[2:] if message.get(k)})
        objs.append(obj)
    return go_json(objs) + b"\n"


# --- JSON as Go's encoding/json writes it ---------------------------------------------------

# Go escapes <, > and & (HTML safety), U+2028/2029, and control characters other than
# \n \r \t as \u00XX (encoding/json encode.go appendString).
_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f<>&\u2028\u2029]')


def _go_string(text: str) -> str:
    def escape(match: re.Match[str]) -> str:
        char = match[0]
        return _GO_ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def _go_float(value: float) -> str:
    """strconv.FormatFloat(f, 'f' or 'e', -1, 64) as encoding/json picks between them."""
    if not math.isfinite(value):
        raise ValueError(f"json: unsupported value: {value}")
    if value == 0:
        return "0"
    if 1e-6 <= abs(value) < 1e21:
        text = format(decimal.Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, exponent = repr(value).split("e")
    sign, digits = exponent[0], exponent[1:].zfill(2)
    if sign == "-" and len(digits) == 2 and digits[0] == "0":
        digits = digits[1:]  # encoding/json: "clean up e-09 to e-9"
    return f"{mantissa}e{sign}{digits}"


def go_json(obj: Any) -> bytes:
    """Compact JSON as Go's json.Marshal writes it (dict order kept: pass structs in
    field order, maps sorted)."""
    return _encode(obj).encode()


def _encode(obj: Any) -> str:
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return _go_float(obj)
    if isinstance(obj, str):
        return _go_string(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{_go_string(str(k))}:{_encode(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(_encode(v) for v in obj) + "]"
    if isinstance(obj, msgspec.Struct):
        return _encode(msgspec.to_builtins(obj))
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")
