"""Facts about a model directory read from its files, without loading it."""

from __future__ import annotations

import functools
import json
import os
import stat
from pathlib import Path
from typing import Any

import msgspec

from ..architectures import ENCODER_TYPES, is_encoder, runs_with_mlx_vlm
from ..config import kv_bytes_per_element
from ..errors import StatusError
from .files import is_regular, read_small, safetensors_header

WEIGHT_GLOB = "*.safetensors"


class Details(msgspec.Struct):
    parent_model: str = ""
    format: str = "safetensors"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino) if stat.S_ISREG(st.st_mode) else None


@functools.lru_cache(maxsize=512)
def _read_cached(path: str, stamp: tuple[int, int, int]) -> bytes:
    return read_small(Path(path))


def cached_bytes(path: Path) -> bytes | None:
    """A small file's bytes, read once per version of the file: every request asks for
    the same config and template, and the event loop must not read them again each time."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    try:
        return _read_cached(str(path), stamp)
    except StatusError:
        return None


@functools.lru_cache(maxsize=512)
def _parse_cached(path: str, stamp: tuple[int, int, int]) -> Any:
    try:
        return json.loads(_read_cached(path, stamp))
    except (ValueError, StatusError):
        return None


def cached_json(path: Path) -> Any:
    stamp = _stamp(path)
    return _parse_cached(str(path), stamp) if stamp is not None else None


def read_config(model_dir: Path) -> dict[str, Any]:
    data = cached_json(model_dir / "config.json")
    return dict(data) if isinstance(data, dict) else {}  # a copy: the cache stays intact


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory (regular files only)."""
    return sorted(p for p in model_dir.glob(WEIGHT_GLOB) if is_regular(p))


def count_parameters(model_dir: Path, config: dict[str, Any]) -> int:
    """Parameters from the safetensors shapes; packed quantized weights are unpacked."""
    bits = int((config.get("quantization") or {}).get("bits", 0) or 0)
    total = 0
    for path in weight_files(model_dir):
        header = safetensors_header(path)
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            if bits and name.endswith((".scales", ".biases")):
                continue  # quantization bookkeeping, not parameters
            if f"{name.rsplit('.', 1)[0]}.scale" in header:
                continue  # the same, in Ollama's names (W.scale, W.bias)
            count = 1
            for dim in info.get("shape", []):
                count *= int(dim)
            if bits and info.get("dtype") == "U32":
                count *= 32 // bits
            total += count
    return total


def format_parameter_size(count: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def quantization_level(config: dict[str, Any]) -> str:
    quant = config.get("quantization") or config.get("quantization_config") or {}
    if isinstance(quant, dict) and quant.get("bits"):
        return f"Q{int(quant['bits'])}"
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "")
    return {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(dtype, dtype.upper())


def describe(model_dir: Path) -> Details:
    config = read_config(model_dir)
    family = str(config.get("model_type", ""))
    return Details(
        family=family,
        families=[family] if family else None,
        parameter_size=format_parameter_size(count_parameters(model_dir, config)),
        quantization_level=quantization_level(config),
    )


def check_model_dir(path: Path) -> str | None:
    """Why `path` cannot be served by mlx-lm, or None when it looks loadable."""
    if not path.is_dir():
        return f"{path} is not a directory"
    if not (path / "config.json").is_file():
        return f"{path} has no config.json"
    if not read_config(path).get("model_type"):
        return f"{path}/config.json has no model_type"
    weights = sorted(path.glob(WEIGHT_GLOB))
    if not weights:
        return f"{path} has no safetensors weights"
    for weight in weights:
        if not is_regular(weight):
            return f"{weight} is not a regular file"
        safetensors_header(weight)  # raises a 400 for a header that lies
    return None


def estimate_memory(
    model_dir: Path,
    weights_bytes: int,
    context_length: int,
    kv_cache_type: str = "f16",
    draft_dir: Path | None = None,
) -> int:
    """Bytes a loaded model needs: its weights plus a KV cache for the context (float16 or
    quantized, OLLAMA_KV_CACHE_TYPE), and a draft model's weights and float16 cache."""
    config = read_config(model_dir)
    if is_encoder(config):
        # No KV cache: one batch of activations (64 sequences of up to 512 tokens).
        hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
        return weights_bytes + 64 * 512 * hidden * 4 * 8
    total = weights_bytes + int(kv_bytes_per_token(config, kv_cache_type) * context_length)
    if draft_dir is not None:
        draft = read_config(draft_dir)
        draft_weights = sum(p.stat().st_size for p in weight_files(draft_dir))
        total += draft_weights + int(kv_bytes_per_token(draft, "f16") * context_length)
    return total


def kv_bytes_per_token(config: dict[str, Any], kv_cache_type: str = "f16") -> float:
    """KV cache bytes one token of context costs (keys and values, every layer)."""
    layers = int(config.get("num_hidden_layers", 0) or 0)
    heads = int(config.get("num_attention_heads", 0) or 0)
    kv_heads = int(config.get("num_key_value_heads", heads) or heads)
    hidden = int(config.get("hidden_size", 0) or 0)
    head_dim = int(config.get("head_dim", 0) or (hidden // heads if heads else 0))
    return 2 * layers * kv_heads * head_dim * kv_bytes_per_element(kv_cache_type, head_dim)


def _tokenizer_text(model_dir: Path) -> str:
    """The chat template and special tokens, where capability markers show up."""
    parts = []
    for name in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
        data = cached_bytes(model_dir / name)
        if data is not None:
            parts.append(data.decode(errors="replace"))
    return "\n".join(parts)


def chat_template(model_dir: Path) -> str:
    """The model's own Jinja chat template, or "" when it has none."""
    config = cached_json(model_dir / "tokenizer_config.json")
    template = config.get("chat_template") if isinstance(config, dict) else None
    jinja = cached_bytes(model_dir / "chat_template.jinja")
    if not template and jinja is not None:
        template = jinja.decode(errors="replace")
    return template if isinstance(template, str) else ""


def capabilities(model_dir: Path, template: str | None = None) -> list[str]:
    """Ollama's capability names, read from config and tokenizer files."""
    config = read_config(model_dir)
    if str(config.get("model_type", "")) in ENCODER_TYPES:
        # A variant the worker cannot run claims nothing (pull refuses it too).
        return ["embedding"] if is_encoder(config) else []
    text = _tokenizer_text(model_dir) + (template or "")
    found = ["completion"]
    if "tools" in text and ("tool_call" in text or "function" in text):
        found.append("tools")
    if "<think>" in text:
        found.append("thinking")
    if runs_with_mlx_vlm(config):  # images need mlx-vlm (the `vision` extra)
        found.append("vision")
    return found
