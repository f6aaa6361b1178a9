"""Per-architecture facts for GGUF -> MLX: tensor names, value transforms, config.json.

Pure Python (no MLX, no numpy): what a file needs and whether it can be converted is decided
from its header alone, before any tensor is read.

Where the facts come from:
- Tensor names: gguf-py's tensor_mapping.py and Ollama's convert/convert_*.go
  `Replacements()` (the HF -> GGUF direction; this module is its inverse).
- Q/K rows: llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` (and Ollama's
  convert_llama.go `repack`) reorder the Q and K rows of the llama architecture for ggml's
  "normal" (interleaved) RoPE; the qwen, gemma and phi3 architectures use NEOX RoPE in
  llama.cpp (llama_model_rope_type) and keep Hugging Face's order.
- Norm offsets: convert_hf_to_gguf.py `GemmaModel`/`Gemma2Model.modify_tensors` and
  `Gemma3Model.norm_shift` (Ollama's convert_gemma.go `addOne`) store every `*norm.weight`
  of gemma, gemma2 and gemma3 as w + 1; mlx-lm's Gemma RMSNorm computes with 1 + w.
- Hyper-parameters and their defaults: llama.cpp src/llama-model.cpp `load_hparams`
  (e.g. the Gemma 27B attention scale, gemma3's sliding-window pattern of 6).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ollmlx.gguf_meta import GGUFHeader

# How each ggml kind converts (workers/gguf_tensors.py does it):
# - float kinds stay float;
# - affine kinds keep their integers as MLX affine triplets of these bits (group size 32);
# - the others are dequantized with gguf-py and re-quantized at REQUANT_BITS (group size 32):
#   the smallest width whose re-quantization error stays under ~5% RMS on random blocks, and
#   8 bits for Q6_K, which the K-quant mixes give to their most sensitive tensors (output,
#   half of ffn_down and attn_v), where 6 bits would double its own error. Measured errors:
#   tests/test_gguf.py. Q8_K, Q8_1 and Q1_0 are absent: gguf-py cannot dequantize them (and
#   llama.cpp uses Q8_K/Q8_1 only for activations), so files holding them are refused.
FLOAT_KINDS = frozenset({"F32", "F16", "BF16", "F64"})
AFFINE_BITS = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q4_K": 4, "Q5_K": 5}
REQUANT_BITS = {
    "Q2_K": 3,
    "Q3_K": 5,
    "Q6_K": 8,
    "IQ1_S": 4,
    "IQ1_M": 5,
    "IQ2_XXS": 5,
    "IQ2_XS": 5,
    "IQ2_S": 5,
    "IQ3_XXS": 5,
    "IQ3_S": 5,
    "IQ4_NL": 5,
    "IQ4_XS": 5,
    "TQ1_0": 5,
    "TQ2_0": 2,
    "MXFP4": 5,
    "NVFP4": 5,
}
RUNNABLE_KINDS = FLOAT_KINDS | set(AFFINE_BITS) | set(REQUANT_BITS)

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Tensors that become config.json values rather than weights.
CONSUMED = frozenset({"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"})
_BLOCK = re.compile(r"blk\.(\d+)\.([a-z0-9_]+)\.(weight|bias)")

_ATTENTION = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
}
_MLP = {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_LLAMA_BLOCK = {
    **_ATTENTION,
    **_MLP,
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Gemma 2/3 have four norms per block (Ollama convert_gemma2.go Replacements).
_GEMMA2_BLOCK = {
    **_ATTENTION,
    **_MLP,
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_PHI3_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    # phi3 keeps gate and up fused in one `ffn_up` (Ollama convert_phi3.go: gate_up_proj).
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
}

# Reads a small float tensor (rope factors); None while only checking a header.
TensorReader = Callable[[str], Sequence[float]] | None


class Unsupported(ValueError):
    """The file is valid but this converter cannot turn it into an MLX model (a 400)."""


@dataclass(frozen=True)
class Arch:
    model_type: str  # mlx-lm's model module
    hf_class: str
    block: dict[str, str]
    config: Callable[[GGUFHeader, TensorReader], dict[str, Any]]
    permute_qk: bool = False
    norm_shift: float = 0.0
    skip_prefixes: tuple[str, ...] = ()
    required: tuple[str, ...] = field(default=())  # tensors of block 0 the model needs


def _int(h: GGUFHeader, key: str, default: int | None = None) -> int:
    value = h.arch_value(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise Unsupported(f"the GGUF file has no {h.architecture}.{key}")
        raise Unsupported(
            f"{h.architecture}.{key} = {value!r} (per-layer values are not supported)"
        )
    return value


def _float(h: GGUFHeader, key: str, default: float) -> float:
    value = h.arch_value(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unsupported(f"{h.architecture}.{key} = {value!r} is not a number")
    return float(value)


def _rope_scaling(h: GGUFHeader) -> dict[str, Any] | None:
    kind = h.arch_value("rope.scaling.type", "none")
    factor = _float(h, "rope.scaling.factor", 1.0)
    if kind in ("none", "") or factor == 1.0:
        return None
    if kind == "linear":
        return {"type": "linear", "factor": factor}
    if kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": factor}
        if (original := h.arch_value("rope.scaling.original_context_length")) is not None:
            scaling["original_max_position_embeddings"] = original
        return scaling
    raise Unsupported(f"rope scaling {kind!r} is not supported")


def _common(h: GGUFHeader, arch: Arch) -> dict[str, Any]:
    embeddings = h.tensor("token_embd.weight")
    if embeddings is None or len(embeddings.shape) != 2:
        raise Unsupported("the GGUF file has no token_embd.weight matrix")
    heads = _int(h, "attention.head_count")
    config: dict[str, Any] = {
        "model_type": arch.model_type,
        "architectures": [arch.hf_class],
        "hidden_size": _int(h, "embedding_length"),
        "num_hidden_layers": _int(h, "block_count"),
        "intermediate_size": _int(h, "feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int(h, "attention.head_count_kv", heads),
        "rms_norm_eps": _float(h, "attention.layer_norm_rms_epsilon", 1e-5),
        # llama.cpp's default when a file has no freq_base (llama-model.cpp).
        "rope_theta": _float(h, "rope.freq_base", 10000.0),
        # The embedding's row count is the vocabulary the weights were trained with.
        "vocab_size": embeddings.shape[1],
        # llama.cpp writes output.weight only when it is not the embedding matrix.
        "tie_word_embeddings": h.tensor("output.weight") is None,
    }
    if (context := h.context_length) > 0:
        config["max_position_embeddings"] = context
    for name, key in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("pad", "padding_token_id"),
    ):
        value = h.metadata.get(f"tokenizer.ggml.{key}")
        if isinstance(value, int):
            config[f"{name}_token_id"] = value
    if (key_length := h.arch_value("attention.key_length")) is not None:
        config["head_dim"] = int(key_length)
    if (scaling := _rope_scaling(h)) is not None:
        config["rope_scaling"] = scaling
    return config


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def llama3_rope_scaling(factors: Sequence[float], dims: int, base: float) -> dict[str, Any]:
    """Recover mlx-lm's "llama3" rope_scaling from llama.cpp's rope_freqs tensor.

    llama.cpp (convert_hf_to_gguf.py LlamaModel.generate_extra_tensors) stores, per
    frequency, the divisor 1, `factor`, or 1/((1-s)/factor + s) with
    s = (old_ctx/wavelen - low)/(high - low). Only the wavelength thresholds old_ctx/low and
    old_ctx/high matter, so old_ctx is fixed at 8192 and low/high fitted from the band; the
    fit is checked against every factor (a file that does not follow the formula is refused).
    """
    f = [float(x) for x in factors]
    if len(f) != dims // 2:
        raise Unsupported(f"rope_freqs has {len(f)} values for a rotary width of {dims}")
    factor = max(f)
    if factor <= 1.0:
        return {}
    old = 8192.0
    wavelens = [2 * math.pi * base ** (2 * i / dims) for i in range(dims // 2)]
    band = [
        (old / w, (1 / v - 1 / factor) / (1 - 1 / factor))
        for v, w in zip(f, wavelens, strict=True)
        if 1.0 + 1e-6 < v < factor * (1 - 1e-6)
    ]
    if len(band) >= 2:
        # s = (x - low)/(high - low) is linear in x = old/wavelen: fit its slope and intercept.
        n = len(band)
        mx_, ms = sum(x for x, _ in band) / n, sum(s for _, s in band) / n
        slope = sum((x - mx_) * (s - ms) for x, s in band) / sum((x - mx_) ** 2 for x, _ in band)
        low = mx_ - ms / slope
        high = low + 1 / slope
    else:
        # One point or none in the band (small heads): any thresholds between the last scaled
        # and the first kept frequency reproduce the factors; pick ones through the point.
        scaled = [old / w for v, w in zip(f, wavelens, strict=True) if v >= factor * (1 - 1e-6)]
        kept = [old / w for v, w in zip(f, wavelens, strict=True) if v <= 1.0 + 1e-6]
        if not scaled or not kept:
            raise Unsupported("rope_freqs does not follow Llama 3 rope scaling")
        a, b = max(scaled), min(kept)
        if band:
            x0, s0 = band[0]
            # low in (a, x0), high = low + (x0 - low)/s0 must stay below b.
            t = min(0.5, 0.5 * (b - x0) / ((x0 - a) * (1 / s0 - 1)))
            low = x0 - t * (x0 - a)
            high = low + (x0 - low) / s0
        else:
            low, high = a + (b - a) / 3, a + 2 * (b - a) / 3
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": int(old),
    }
    # mlx-lm's Llama3RoPE, recomputed: it must reproduce every stored divisor.
    for v, w in zip(f, wavelens, strict=True):
        if w < old / high:
            expect = 1.0
        elif w > old / low:
            expect = factor
        else:
            s = (old / w - low) / (high - low)
            expect = 1 / ((1 - s) / factor + s)
        if not math.isclose(v, expect, rel_tol=1e-4):
            raise Unsupported("rope_freqs does not follow Llama 3 rope scaling")
    return scaling


def _llama(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    if _int(h, "expert_count", 0) > 0:
        raise Unsupported("llama models with experts (Mixtral) are not converted yet")
    config = _common(h, ARCHS["llama"])
    head_dim = _head_dim(config)
    rope_dims = _int(h, "rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise Unsupported(f"partial rotary embeddings ({rope_dims} of {head_dim}) for llama")
    config["attention_bias"] = h.tensor("blk.0.attn_q.bias") is not None
    config["mlp_bias"] = h.tensor("blk.0.ffn_up.bias") is not None
    if h.tensor("rope_freqs.weight") is not None:
        if "rope_scaling" in config:
            raise Unsupported("both rope_freqs and rope.scaling.type are set")
        if read is not None:
            factors = read("rope_freqs.weight")
            if scaling := llama3_rope_scaling(factors, head_dim, config["rope_theta"]):
                config["rope_scaling"] = scaling
    return config


def _qwen2(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    return _common(h, ARCHS["qwen2"])


def _qwen3(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h, ARCHS["qwen3"])
    config["head_dim"] = _head_dim(config)  # mlx-lm's qwen3 requires it
    return config


def _gemma_scale(h: GGUFHeader, config: dict[str, Any], layers_27b: int) -> int:
    # llama-model.cpp: the 27B models scale by 1/sqrt(n_embd/n_head), the others by head_dim.
    # An int: transformers' config validation (which mlx-lm's tokenizer loading runs) wants one.
    if config["num_hidden_layers"] == layers_27b:
        return config["hidden_size"] // config["num_attention_heads"]
    return _head_dim(config)


def _gemma(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h, ARCHS["gemma"])
    config["head_dim"] = _head_dim(config)
    return config


def _gemma2(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h, ARCHS["gemma2"])
    config["head_dim"] = _head_dim(config)
    config["attn_logit_softcapping"] = _float(h, "attn_logit_softcapping", 50.0)
    config["final_logit_softcapping"] = _float(h, "final_logit_softcapping", 30.0)
    config["query_pre_attn_scalar"] = _gemma_scale(h, config, layers_27b=46)
    if (window := h.arch_value("attention.sliding_window")) is not None:
        config["sliding_window"] = int(window)
    return config


def _gemma3_pattern(h: GGUFHeader, layers: int) -> int:
    """Every n-th layer is global: llama.cpp fixes n = 6 (set_swa_pattern(6)); Ollama's
    converter may write the per-layer pattern (True = sliding) as an array instead."""
    pattern = h.arch_value("attention.sliding_window_pattern")
    if pattern is None:
        return 6
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        return pattern
    if isinstance(pattern, list) and len(pattern) == layers:
        globals_ = [i for i, sliding in enumerate(pattern) if not sliding]
        if globals_:
            n = globals_[0] + 1
            if all(bool(s) == ((i + 1) % n != 0) for i, s in enumerate(pattern)):
                return n
        elif all(pattern):
            return layers + 1  # no global layer at all
    raise Unsupported("gemma3 sliding window pattern is not periodic")


def _gemma3(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h, ARCHS["gemma3"])
    config["head_dim"] = _head_dim(config)
    # Ollama's gemma3 model: rope.freq_base defaults to 1e6, the local one to 1e4 (llama.cpp
    # hardcodes rope_freq_base_train_swa = 10000).
    config["rope_theta"] = _float(h, "rope.freq_base", 1_000_000.0)
    config["rope_local_base_freq"] = _float(h, "rope.local.freq_base", 10_000.0)
    config["query_pre_attn_scalar"] = _gemma_scale(h, config, layers_27b=62)
    config["sliding_window"] = _int(h, "attention.sliding_window", 512)
    config["sliding_window_pattern"] = _gemma3_pattern(h, config["num_hidden_layers"])
    if h.arch_value("final_logit_softcapping"):
        raise Unsupported("gemma3 with final logit softcapping is not supported by mlx-lm")
    if "rope_scaling" in config:  # mlx-lm's initialize_rope reads "rope_type" or "type"
        config["rope_scaling"] = {"rope_type": "linear", **config["rope_scaling"]}
        config["rope_scaling"].pop("type", None)
    return config


def _phi3(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h, ARCHS["phi3"])
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    if config.pop("head_dim", head_dim) != head_dim:
        raise Unsupported("phi3 with a head size other than hidden_size / head_count")
    config["partial_rotary_factor"] = _int(h, "rope.dimension_count", head_dim) / head_dim
    context = config.get("max_position_embeddings", 4096)
    config["original_max_position_embeddings"] = _int(
        h, "rope.scaling.original_context_length", context
    )
    if h.tensor("rope_factors_long.weight") is not None and read is not None:
        # LongRoPE: llama.cpp keeps the per-frequency factors as tensors (Ollama convert_phi3.go).
        config["rope_scaling"] = {
            "type": "longrope",
            "long_factor": [float(x) for x in read("rope_factors_long.weight")],
            "short_factor": [float(x) for x in read("rope_factors_short.weight")],
        }
    if (window := h.arch_value("attention.sliding_window")) is not None:
        config["sliding_window"] = int(window)
    return config


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", "LlamaForCausalLM", _LLAMA_BLOCK, _llama, permute_qk=True),
    "qwen2": Arch("qwen2", "Qwen2ForCausalLM", _LLAMA_BLOCK, _qwen2, required=("attn_q.bias",)),
    "qwen3": Arch("qwen3", "Qwen3ForCausalLM", {**_LLAMA_BLOCK, **_QK_NORM}, _qwen3),
    "gemma": Arch("gemma", "GemmaForCausalLM", _LLAMA_BLOCK, _gemma, norm_shift=1.0),
    "gemma2": Arch("gemma2", "Gemma2ForCausalLM", _GEMMA2_BLOCK, _gemma2, norm_shift=1.0),
    "gemma3": Arch(
        "gemma3_text",
        "Gemma3ForCausalLM",
        {**_GEMMA2_BLOCK, **_QK_NORM},
        _gemma3,
        norm_shift=1.0,
        # Vision tower and projector of the multimodal files: the text model is converted.
        skip_prefixes=("v.", "mm."),
    ),
    "phi3": Arch("phi3", "Phi3ForCausalLM", _PHI3_BLOCK, _phi3, required=("attn_qkv.weight",)),
}


def hf_name(arch: Arch, name: str) -> str | None:
    """The mlx-lm weight name of a GGUF tensor; None for tensors that are not weights."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    if name in CONSUMED or name.startswith(arch.skip_prefixes):
        return None
    match = _BLOCK.fullmatch(name)
    if match is None or match[2] not in arch.block:
        return None if name.endswith(".attn_rot_embd") else _unknown(arch, name)
    return f"model.layers.{match[1]}.{arch.block[match[2]]}.{match[3]}"


def _unknown(arch: Arch, name: str) -> str:
    raise Unsupported(f"tensor {name} is not part of a {arch.model_type} model")


def block_part(name: str) -> str | None:
    """`attn_q` for `blk.3.attn_q.weight`."""
    match = _BLOCK.fullmatch(name)
    return match[2] if match else None


def problem(h: GGUFHeader) -> str | None:
    """Why the file cannot be converted (architecture, tensor kinds, names), or None."""
    name = h.architecture
    arch = ARCHS.get(name)
    if arch is None:
        known = ", ".join(sorted(ARCHS))
        return f"GGUF architecture {name or '(none)'!r} is not converted yet (supported: {known})"
    bad = sorted({t.type_name for t in h.tensors} - RUNNABLE_KINDS)
    if bad:
        return f"tensor type {', '.join(bad)} cannot be run by MLX (gguf-py cannot dequantize it)"
    try:
        for t in h.tensors:
            if len(t.shape) > 2:
                return f"tensor {t.name} has {len(t.shape)} dimensions (experts are not supported)"
            hf_name(arch, t.name)
        for part in arch.required:
            if h.tensor(f"blk.0.{part}") is None:
                return f"{name} file without blk.0.{part} is not supported"
        arch.config(h, None)
    except Unsupported as exc:
        return str(exc)
    if not isinstance(h.metadata.get("tokenizer.ggml.model"), str):
        return "the GGUF file has no tokenizer (tokenizer.ggml.model)"
    return None
