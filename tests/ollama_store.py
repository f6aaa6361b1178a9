"""Model stores written the way Ollama writes them, for the tests (independent of ollmlx).

- Manifests: manifest.WriteManifest (json.NewEncoder: compact, a trailing newline), config
  layer `application/vnd.docker.container.image.v1+json`, layers in Ollama's media types.
- Safetensors models: what x/create writes (x/create/plan.go planFloat: one blob per tensor,
  named by the tensor; x/create/quantize.go: a quantized weight `W` with `W.scale` and, for
  affine kinds, `W.bias`, the blob's `__metadata__` `quant_type`/`group_size`), every
  top-level `.json` but the shard index as a `json` layer by name (pipeline.go
  importConfigBlobs), and the config x/create/client writes (model_format safetensors,
  file_type the quantization, capabilities, requires 0.19.0).
- GGUF models: what CreateHandler writes for a GGUF file (server/create.go createModel:
  model_format gguf, model_family the architecture, model_type format.HumanNumber of the
  parameter count, file_type, os linux, architecture amd64; a `model` layer whose `from` is
  the file name), plus template, system, params and messages layers (setTemplate ...).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx

MEDIA = "application/vnd.ollama.image."
CONFIG = "application/vnd.docker.container.image.v1+json"
# x/quant/quant.go: group size, bits, MLX mode.
KINDS = {
    "int4": (64, 4, "affine"),
    "int8": (64, 8, "affine"),
    "mxfp4": (32, 4, "mxfp4"),
    "mxfp8": (32, 8, "mxfp8"),
    "nvfp4": (16, 4, "nvfp4"),
}
QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def go_json(obj: Any) -> bytes:
    """json.Marshal for the ASCII-only values used here (no <, >, & to escape)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def human_number(count: int) -> str:
    """format.HumanNumber."""
    if count >= 10**9:
        n = count / 10**9
        return f"{n:.0f}B" if n == int(n) else f"{n:.1f}B"
    if count >= 10**6:
        n = count / 10**6
        return f"{n:.0f}M" if n == int(n) else f"{n:.2f}M"
    return f"{count / 1000:.0f}K" if count >= 1000 else str(count)


class OllamaStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / digest.replace(":", "-")).write_bytes(data)
        return digest, len(data)

    def layer(self, media: str, data: bytes, **extra: str) -> dict[str, Any]:
        digest, size = self.blob(data)
        return {"mediaType": media, "digest": digest, "size": size, **extra}

    def manifest_path(self, name: str) -> Path:
        host, namespace, model, tag = _parts(name)
        return self.root / "manifests" / host / namespace / model / tag

    def write_manifest(self, name: str, config: dict[str, Any], layers: list[dict[str, Any]]):
        config_layer = self.layer(CONFIG, go_json(config) + b"\n")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config_layer,
            "layers": layers,
        }
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(go_json(manifest) + b"\n")
        return path

    def settings(
        self,
        template: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        messages: list[dict[str, str]] | None = None,
    ) -> list[dict[str, Any]]:
        layers = []
        if template:
            layers.append(self.layer(MEDIA + "template", template.encode()))
        if system:
            layers.append(self.layer(MEDIA + "system", system.encode()))
        if params:
            body = go_json(dict(sorted(params.items()))) + b"\n"
            layers.append(self.layer(MEDIA + "params", body))
        if messages:
            layers.append(self.layer(MEDIA + "messages", go_json(messages) + b"\n"))
        return layers

    def safetensors_model(
        self, name: str, model_dir: Path, quant: str | None = None, **settings: Any
    ) -> Path:
        """The model folder as x/create imports it: one blob per tensor (quantized ones
        with their companions), the config files as json layers."""
        tensors = (
            quantized_tensors(model_dir, quant)
            if quant
            else mx.load(str(model_dir / "model.safetensors"))
        )
        layers = []
        for tensor in sorted(t for t in tensors if not t.endswith((".scale", ".bias"))):
            group = {tensor: tensors[tensor]}
            for companion in (".scale", ".bias"):
                if tensor + companion in tensors:
                    group[tensor + companion] = tensors[tensor + companion]
            metadata = {}
            if tensor + ".scale" in group:
                assert quant is not None
                metadata = {"quant_type": quant, "group_size": str(KINDS[quant][0])}
            layers.append(self.layer(MEDIA + "tensor", _safetensors(group, metadata), name=tensor))
        for path in sorted(model_dir.glob("*.json")):
            if path.name != "model.safetensors.index.json":
                layers.append(self.layer(MEDIA + "json", path.read_bytes(), name=path.name))
        config = {
            "model_format": "safetensors",
            "model_family": "",
            "model_families": None,
            "model_type": "",
            "file_type": quant or "",
            "requires": "0.19.0",
            "capabilities": ["completion"],
            "architecture": "",
            "os": "",
        }
        return self.write_manifest(name, config, [*layers, *self.settings(**settings)])

    def gguf_model(self, name: str, gguf_path: Path, **settings: Any) -> Path:
        from ollmlx.gguf_meta import read_header

        header = read_header(gguf_path, array_limit=0)
        layer = self.layer(MEDIA + "model", gguf_path.read_bytes(), **{"from": gguf_path.name})
        arch = header.architecture
        config = {
            "model_format": "gguf",
            "model_family": arch,
            "model_families": [arch],
            "model_type": human_number(header.parameter_count),
            "file_type": header.file_type,
            "architecture": "amd64",
            "os": "linux",
        }
        return self.write_manifest(name, config, [layer, *self.settings(**settings)])


def _parts(name: str) -> tuple[str, str, str, str]:
    base, _, tag = name.partition(":")
    pieces = base.split("/")
    host, namespace = "registry.ollama.ai", "library"
    if len(pieces) == 3:
        host, namespace, model = pieces
    elif len(pieces) == 2:
        namespace, model = pieces
    else:
        (model,) = pieces
    return host, namespace, model, tag or "latest"


def _safetensors(arrays: dict[str, mx.array], metadata: dict[str, str]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob.safetensors"
        mx.save_safetensors(str(path), arrays, metadata=metadata or None)
        return path.read_bytes()


def quantized_tensors(model_dir: Path, quant: str) -> dict[str, mx.array]:
    """The model's tensors with every projection quantized as Ollama's x/create does it
    (mlx.Quantize with x/quant's parameters), in Ollama's names."""
    group, bits, mode = KINDS[quant]
    out = {}
    for name, array in mx.load(str(model_dir / "model.safetensors")).items():
        if name.endswith(".weight") and name.split(".")[-2] in QUANTIZED:
            packed = mx.quantize(array, group_size=group, bits=bits, mode=mode)
            out[name], out[name + ".scale"] = packed[0], packed[1]
            if len(packed) > 2 and packed[2] is not None:
                out[name + ".bias"] = packed[2]
        else:
            out[name] = array
    return out


def mlx_lm_twin(model_dir: Path, quant: str, out: Path) -> Path:
    """The same quantized arrays as an mlx-lm folder (its own names and config): what
    in-process mlx-lm loads as the oracle for a model of Ollama's quantized blobs."""
    group, bits, mode = KINDS[quant]
    out.mkdir(parents=True, exist_ok=True)
    weights = {}
    for name, array in quantized_tensors(model_dir, quant).items():
        if name.endswith(".weight.scale"):
            weights[name.removesuffix(".weight.scale") + ".scales"] = array
        elif name.endswith(".weight.bias"):
            weights[name.removesuffix(".weight.bias") + ".biases"] = array
        else:
            weights[name] = array
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    for path in model_dir.glob("*.json"):
        if path.name not in ("config.json", "model.safetensors.index.json"):
            (out / path.name).write_bytes(path.read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization"] = {"group_size": group, "bits": bits, "mode": mode}
    (out / "config.json").write_text(json.dumps(config))
    return out
