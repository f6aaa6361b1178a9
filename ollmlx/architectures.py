"""Which `config.json` model types ollmlx can run, found without importing MLX.

The supervisor never imports mlx (it must start fast and stay small), so the list comes
from the installed mlx_lm package's files: one module per architecture under
`mlx_lm/models/`, plus the aliases in `mlx_lm/utils.py`'s MODEL_REMAPPING (read with ast).
"""

from __future__ import annotations

import ast
import functools
from importlib import util
from pathlib import Path
from typing import Any

# Encoder models served for /api/embed rather than by mlx-lm's generators.
EMBEDDING_TYPES = frozenset({"bert", "xlm-roberta", "xlm_roberta", "modernbert", "nomic_bert"})
_NOT_MODELS = frozenset({"base", "cache", "rope_utils", "switch_layers", "activations"})


def _package_dir(package: str = "mlx_lm") -> Path | None:
    spec = util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _remapping(utils_py: Path) -> dict[str, str]:
    try:
        tree = ast.parse(utils_py.read_text())
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "MODEL_REMAPPING" for t in node.targets
        ):
            with_values = ast.literal_eval(node.value)
            return dict(with_values) if isinstance(with_values, dict) else {}
    return {}


@functools.cache
def supported_model_types() -> frozenset[str]:
    root = _package_dir()
    if root is None:
        return frozenset()
    modules = {p.stem for p in (root / "models").glob("*.py") if not p.stem.startswith("_")}
    modules -= _NOT_MODELS
    remapped = {k for k, v in _remapping(root / "utils.py").items() if v in modules}
    return frozenset(modules | remapped)


@functools.cache
def vision_model_types() -> frozenset[str]:
    """Model types of the installed mlx-vlm (optional: empty without it), from its files."""
    root = _package_dir("mlx_vlm")
    if root is None:
        return frozenset()
    modules = {p.name for p in (root / "models").iterdir() if (p / "__init__.py").is_file()}
    remapped = {k for k, v in _remapping(root / "utils.py").items() if v in modules}
    return frozenset(modules | remapped)


def runs_with_mlx_vlm(config: dict[str, Any]) -> bool:
    """A vision model (it has a vision_config) of a type the installed mlx-vlm runs."""
    model_type = str(config.get("model_type") or "").lower()
    return "vision_config" in config and model_type in vision_model_types()


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why a model with this config cannot run, or None when it can."""
    model_type = str(config.get("model_type") or "")
    if not model_type:
        return "config.json has no model_type"
    if model_type in EMBEDDING_TYPES or model_type in supported_model_types():
        return None
    if runs_with_mlx_vlm(config):
        return None
    return f"unsupported architecture {model_type!r}: mlx-lm has no model of this type"
