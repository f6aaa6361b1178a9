"""Facts about a model directory read from its files, without loading it."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import msgspec

from ..architectures import ENCODER_TYPES, is_encoder, runs_with_mlx_vlm

WEIGHT_GLOB = "*.safetensors"


class Details(msgspec.Struct):
    parent_model: str = ""
    format: str = "safetensors"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return header if isinstance(header, dict) else {}


def count_parameters(model_dir: Path, config: dict[str, Any]) -> int:
    """Parameters from the safetensors shapes; packed quantized weights are unpacked."""
    bits = int((config.get("quantization") or {}).get("bits", 0) or 0)
    total = 0
    for path in sorted(model_dir.glob(WEIGHT_GLOB)):
        for name, info in _safetensors_header(path).items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            if bits and name.endswith((".scales", ".biases")):
                continue  # quantization bookkeeping, not parameters
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
    if not any(path.glob(WEIGHT_GLOB)):
        return f"{path} has no safetensors weights"
    return None


def estimate_memory(model_dir: Path, weights_bytes: int, context_length: int) -> int:
    """Bytes a loaded model needs: its weights plus a float16 KV cache for the context."""
    config = read_config(model_dir)
    if is_encoder(config):
        # No KV cache: one batch of activations (64 sequences of up to 512 tokens).
        hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
        return weights_bytes + 64 * 512 * hidden * 4 * 8
    layers = int(config.get("num_hidden_layers", 0) or 0)
    heads = int(config.get("num_attention_heads", 0) or 0)
    kv_heads = int(config.get("num_key_value_heads", heads) or heads)
    hidden = int(config.get("hidden_size", 0) or 0)
    head_dim = int(config.get("head_dim", 0) or (hidden // heads if heads else 0))
    kv_cache = 2 * layers * kv_heads * head_dim * context_length * 2
    return weights_bytes + kv_cache


def _tokenizer_text(model_dir: Path) -> str:
    """The chat template and special tokens, where capability markers show up."""
    parts = []
    for name in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
        path = model_dir / name
        if path.is_file():
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def chat_template(model_dir: Path) -> str:
    """The model's own Jinja chat template, or "" when it has none."""
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    template = config.get("chat_template") if isinstance(config, dict) else None
    if not template and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
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
