"""Which `config.json` model types ollmlx can run, found without importing MLX.

The supervisor never imports mlx (it must start fast and stay small), so the list comes
from the installed mlx_lm package's files: one module per architecture under
`mlx_lm/models/`, plus the aliases in `mlx_lm/utils.py`'s MODEL_REMAPPING (read with ast).
"""

from __future__ import annotations

import ast
import functools
import threading
from importlib import util
from pathlib import Path
from typing import Any

# The one list of encoder model types: the worker (workers/encoders/) runs exactly these
# for /api/embed, pull accepts them and /api/show reports them as `embedding`.
ENCODER_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "xlm_roberta", "nomic_bert", "modernbert"}
)
_NOT_MODELS = frozenset({"base", "cache", "rope_utils", "switch_layers", "activations"})


def _package_dir(package: str = "mlx_lm") -> Path | None:
    spec = util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# CPython 3.11's parser is not safe to run from two threads at once ("AST constructor
# recursion depth mismatch"): the store reads these facts from worker threads.
_PARSE_LOCK = threading.Lock()


def _remapping(utils_py: Path) -> dict[str, str]:
    try:
        with _PARSE_LOCK:
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


def encoder_problem(config: dict[str, Any]) -> str | None:
    """Why the worker cannot run this encoder config (a variant we do not implement)."""
    model_type = str(config.get("model_type") or "")
    if model_type == "nomic_bert":
        if config.get("prenorm"):
            return "nomic_bert with prenorm is not supported"
        if config.get("rotary_emb_interleaved") or config.get("rotary_emb_scale_base"):
            return "nomic_bert with interleaved or xPos rotary embeddings is not supported"
        if config.get("use_rms_norm") or config.get("parallel_block"):
            return "nomic_bert with RMSNorm or parallel blocks is not supported"
        if config.get("activation_function", "swiglu") not in _NOMIC_ACTIVATIONS:
            return f"nomic_bert activation {config.get('activation_function')!r} is not supported"
    return None


_NOMIC_ACTIVATIONS = frozenset(
    {"swiglu", "geglu", "glu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"}
)


def is_encoder(config: dict[str, Any]) -> bool:
    """An embedding-only encoder the worker can run (so `embedding`, not `completion`)."""
    model_type = str(config.get("model_type") or "")
    return model_type in ENCODER_TYPES and encoder_problem(config) is None


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why a model with this config cannot run, or None when it can."""
    model_type = str(config.get("model_type") or "")
    if not model_type:
        return "config.json has no model_type"
    if model_type in ENCODER_TYPES:
        return encoder_problem(config)
    if model_type in supported_model_types():
        return None
    if runs_with_mlx_vlm(config):
        return None
    return f"unsupported architecture {model_type!r}: mlx-lm has no model of this type"


@functools.cache
def parallelism(model_type: str) -> frozenset[str]:
    """How mlx-lm can split a model of this type over a group, read from its module's text
    (no import): "tensor" with a `shard()` method, "pipeline" with `pipeline()` (the
    PipelineMixin), the two things mlx_lm.utils.sharded_load calls."""
    root = _package_dir()
    if root is None:
        return frozenset()
    module = _remapping(root / "utils.py").get(model_type, model_type)
    try:
        text = (root / "models" / f"{module}.py").read_text()
    except OSError:
        return frozenset()
    found = set()
    if "def shard(" in text:
        found.add("tensor")
    if "PipelineMixin" in text or "def pipeline(" in text:
        found.add("pipeline")
    return frozenset(found)
