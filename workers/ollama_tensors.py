"""Models made of Ollama's quantized tensor blobs, loaded by mlx-lm with their names translated.

Ollama's MLX engine keeps a quantized weight `W` as `W`, `W.scale`, `W.bias` (affine) and
`W.global_scale` (nvfp4 with a second scale), the way x/create/quantize.go writes them and
x/mlxrunner/runner.go loadTensorsFromManifest reads them; mlx-lm expects `<module>.scales`,
`<module>.biases` and `<module>.global_scale`. The supervisor links the blobs into a model
folder, writes config.json's `quantization` from their metadata and drops a marker file
(ollmlx/store/layout.py); here the keys are renamed before the model's own `sanitize`, and
mlx-lm's loader does the rest (per-module quantization, tokenizer, adapters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The same name as ollmlx/store/layout.py OLLAMA_TENSORS_MARKER (workers import leaves only).
MARKER = "ollmlx-ollama-tensors.json"


def is_ollama(model_dir: Path) -> bool:
    return (model_dir / MARKER).is_file()


def _module(weight: str) -> str:
    return weight.removesuffix(".weight")


def rename(weights: dict[str, Any]) -> dict[str, Any]:
    """Ollama's quantized names -> mlx-lm's; every other key is kept as it is (a real
    `X.bias` has no `X.scale`, a parameter named `.scale` has no packed base tensor)."""
    out = {}
    for key, value in weights.items():
        for suffix, new in ((".scale", ".scales"), (".global_scale", ".global_scale")):
            base = key.removesuffix(suffix)
            if key.endswith(suffix) and base in weights and f"{base}.scale" in weights:
                out[_module(base) + new] = value
                break
        else:
            base = key.removesuffix(".bias")
            if key.endswith(".bias") and f"{base}.scale" in weights and base in weights:
                out[_module(base) + ".biases"] = value
            else:
                out[key] = value
    return out


def load(model_dir: Path, adapter_path: str | None) -> tuple[Any, Any]:
    """mlx_lm.load for such a folder: the model class's sanitize renames first."""
    from mlx_lm.utils import _get_classes, load_adapters, load_model, load_tokenizer

    def classes(config: dict[str, Any]) -> tuple[type, type]:
        model_class, args_class = _get_classes(config)

        class Renamed(model_class):  # type: ignore[misc, valid-type]
            def sanitize(self, weights: dict[str, Any]) -> dict[str, Any]:
                weights = rename(weights)
                parent = getattr(super(), "sanitize", None)
                return parent(weights) if parent is not None else weights

        return Renamed, args_class

    model, config = load_model(model_dir, get_model_classes=classes)
    if adapter_path is not None:
        model = load_adapters(model, adapter_path)
        model.eval()
    tokenizer = load_tokenizer(model_dir, {}, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer
