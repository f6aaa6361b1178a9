"""config.json for a GGUF model: llama.cpp's hyper-parameter keys -> mlx-lm's, per architecture.

Pure Python: the same functions check a header before any work (read=None) and build the
config during conversion (read = a reader of the few small tensors that hold settings:
llama's rope_freqs, phi3's rope factors). Defaults are llama.cpp's (src/llama-model.cpp
load_hparams) unless noted; key names are gguf-py's constants.py (`{arch}.context_length`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ollmlx.gguf_meta import GGUFHeader

# Reads a small float tensor (rope factors); None while only checking a header.
TensorReader = Callable[[str], Sequence[float]] | None


class Unsupported(ValueError):
    """The file is valid but this converter cannot turn it into an MLX model (a 400)."""


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


def _common(h: GGUFHeader) -> dict[str, Any]:
    embeddings = h.tensor("token_embd.weight")
    if embeddings is None or len(embeddings.shape) != 2:
        raise Unsupported("the GGUF file has no token_embd.weight matrix")
    heads = _int(h, "attention.head_count")
    config: dict[str, Any] = {
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


def llama(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    if _int(h, "expert_count", 0) > 0:
        raise Unsupported("llama models with experts (Mixtral) are not converted yet")
    config = _common(h)
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


def qwen2(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    return _common(h)


def qwen3(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h)
    config["head_dim"] = _head_dim(config)  # mlx-lm's qwen3 requires it
    return config


def _gemma_scale(h: GGUFHeader, config: dict[str, Any], layers_27b: int) -> int:
    # llama-model.cpp: the 27B models scale by 1/sqrt(n_embd/n_head), the others by head_dim.
    # An int: transformers' config validation (which mlx-lm's tokenizer loading runs) wants one.
    if config["num_hidden_layers"] == layers_27b:
        return config["hidden_size"] // config["num_attention_heads"]
    return _head_dim(config)


def gemma(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h)
    config["head_dim"] = _head_dim(config)
    return config


def gemma2(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h)
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


def gemma3(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h)
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


def phi3(h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
    config = _common(h)
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    if config.pop("head_dim", head_dim) != head_dim:
        raise Unsupported("phi3 with a head size other than hidden_size / head_count")
    config["partial_rotary_factor"] = _int(h, "rope.dimension_count", head_dim) / head_dim
    context = config.get("max_position_embeddings", 4096)
    config["original_max_position_embeddings"] = _int(
        h, "rope.scaling.original_context_length", context
    )
    if h.tensor("rope_factors_long.weight") is not None and read is not None:
        # LongRoPE: llama.cpp keeps the per-frequency factors as tensors (Ollama convert_phi3.go
        # writes them even when the model has none: empty tensors then).
        long = [float(x) for x in read("rope_factors_long.weight")]
        short = [float(x) for x in read("rope_factors_short.weight")]
        rope_dims = round(head_dim * config["partial_rotary_factor"])
        if long or short:
            if len(long) != rope_dims // 2 or len(short) != rope_dims // 2:
                raise Unsupported(f"phi3 rope factors of {len(long)} values for {rope_dims} dims")
            config["rope_scaling"] = {
                "type": "longrope",
                "long_factor": long,
                "short_factor": short,
            }
    if (window := h.arch_value("attention.sliding_window")) is not None:
        config["sliding_window"] = int(window)
    return config
