"""GGUF files for the converter's tests, written the way llama.cpp's convert_hf_to_gguf.py does.

`write_gguf(model_dir, path, qtype)` turns a tiny Hugging Face-layout model directory (from
tests/tinymodel.py) into a GGUF file with gguf-py's GGUFWriter: hyper-parameters under
`<arch>.*`, the byte-level BPE vocabulary under `tokenizer.ggml.*`, the chat template, and
tensors renamed with gguf-py's own TensorNameMap, with the value transforms the converter
applies (convert_hf_to_gguf.py): llama's Q/K rows permuted for ggml's RoPE (`LlamaModel.
permute`), Gemma's norm weights stored as w + 1 (`Gemma3Model.norm_shift`), 1-D tensors and
norms kept F32. GGUFWriter cannot quantize K-quants, so Q4_K and Q6_K blocks are encoded
here by hand (`encode_q4_k`, `encode_q6_k`), in the layouts of gguf-py's quants.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType as Q

# HF model type -> GGUF architecture.
ARCH = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
}
_MODEL_ARCH = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "gemma2": gguf.MODEL_ARCH.GEMMA2,
    "gemma3": gguf.MODEL_ARCH.GEMMA3,
    "phi3": gguf.MODEL_ARCH.PHI3,
}
# Gemma*RMSNorm computes with 1 + w; llama.cpp stores w + 1 (GemmaModel.modify_tensors).
NORM_SHIFTED = frozenset({"gemma2", "gemma3"})
# llama.cpp's LlamaFileType for each whole-file type (gguf-py constants.py).
_FILE_TYPE = {
    Q.F32: gguf.LlamaFileType.ALL_F32,
    Q.F16: gguf.LlamaFileType.MOSTLY_F16,
    Q.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
    Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
    Q.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_M,
}


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF rows -> ggml's interleaved RoPE rows."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


# --- K-quant encoders (simple round-to-nearest; the layouts are what matter) ---------------


def encode_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, n*256) -> Q4_K blocks (rows, n*144): d, dmin, 12 scale bytes, 128 qs."""
    rows = x.shape[0]
    sub = x.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(sub.min(axis=-1), 0)
    scale = (sub.max(axis=-1) - lo) / 15
    d = (scale.max(axis=-1) / 63).astype(np.float16)
    dmin = (-lo.min(axis=-1) / 63).astype(np.float16)
    d32, dm32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.round(scale / d32), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dm32 > 0, np.round(-lo / dm32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[..., None]
        q = np.where(step > 0, np.round((sub + (dm32 * m)[..., None]) / step), 0)
    q = q.clip(0, 15).astype(np.uint8)
    scales = np.zeros((sub.shape[0], 12), dtype=np.uint8)
    scales[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = (m[:, 0:4] & 0x3F) | ((m[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    # 32-byte chunk c: low nibbles are sub-block 2c, high nibbles sub-block 2c + 1.
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)
    blocks = np.concatenate(
        [d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8), scales, qs], axis=1
    )
    return blocks.reshape(rows, -1)


def encode_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, n*256) -> Q6_K blocks (rows, n*210): ql[128], qh[64], scales[16], d."""
    rows = x.shape[0]
    sub = x.reshape(-1, 16, 16).astype(np.float32)
    amax = np.abs(sub).max(axis=-1) / 31
    d = (amax.max(axis=-1) / 127).astype(np.float16)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.round(amax / d32), 0).clip(-128, 127).astype(np.int8)
        step = (d32 * sc)[..., None]
        q = np.where(step != 0, np.round(sub / step), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)  # two halves of 128
    low, high = q & 0x0F, q >> 4
    # ql: byte l of half h holds value l (low nibble) and l + 64 (high nibble);
    # qh: byte l of half h holds the top two bits of values l, l+32, l+64, l+96.
    ql = (low[..., :64] | (low[..., 64:] << 4)).reshape(-1, 128)
    qh = high.reshape(-1, 2, 4, 32)
    qh = (qh[:, :, 0] | (qh[:, :, 1] << 2) | (qh[:, :, 2] << 4) | (qh[:, :, 3] << 6)).reshape(
        -1, 64
    )
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(-1, 1).view(np.uint8)], axis=1)
    return blocks.reshape(rows, -1)


def encode(x: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.Q4_K:
        return encode_q4_k(x)
    if qtype == Q.Q6_K:
        return encode_q6_k(x)
    return gguf.quants.quantize(x, qtype)


# --- Whole models --------------------------------------------------------------------------


def _tokenizer_kv(writer: gguf.GGUFWriter, model_dir: Path, chat_template: bool) -> None:
    """What convert_hf_to_gguf.py `_set_vocab_gpt2` + gguf.SpecialVocab write."""
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    added = {t["content"]: t for t in tok["added_tokens"]}
    for content, t in added.items():
        vocab[content] = t["id"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(len(by_id)))
    tokens = [t for t, _ in by_id]
    types = [
        gguf.TokenType.CONTROL if t in added and added[t]["special"] else gguf.TokenType.NORMAL
        for t in tokens
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (
        ("bos_token", writer.add_bos_token_id),
        ("eos_token", writer.add_eos_token_id),
        ("pad_token", writer.add_pad_token_id),
    ):
        if cfg.get(key):
            add(vocab[cfg[key]])
    writer.add_add_bos_token(bool(cfg.get("add_bos_token", False)))
    writer.add_add_eos_token(bool(cfg.get("add_eos_token", False)))
    if chat_template and cfg.get("chat_template"):
        writer.add_chat_template(cfg["chat_template"])


def _hparams_kv(writer: gguf.GGUFWriter, arch: str, config: dict[str, Any]) -> None:
    """TextModel.set_gguf_parameters (plus the Gemma3Model / LlamaModel extras)."""
    heads = config["num_attention_heads"]
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    if arch in ("llama", "phi3"):
        head_dim = config["hidden_size"] // heads
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
    if arch == "phi3":  # Phi3MiniModel.set_gguf_parameters
        writer.add_rope_scaling_orig_ctx_len(config["original_max_position_embeddings"])
    if arch == "gemma2":  # Gemma2Model.set_gguf_parameters
        writer.add_attn_logit_softcapping(config["attn_logit_softcapping"])
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])
        writer.add_sliding_window(config["sliding_window"])
    if "head_dim" in config:
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    if arch == "gemma3":
        writer.add_sliding_window(config["sliding_window"])
        # llama.cpp fixes the pattern at 6; Ollama's convert_gemma3.go writes it per layer
        # (True = sliding), which a 2-layer model needs.
        n, layers = config["sliding_window_pattern"], config["num_hidden_layers"]
        writer.add_array(
            "gemma3.attention.sliding_window_pattern", [(i + 1) % n != 0 for i in range(layers)]
        )


def llama3_rope_factors(config: dict[str, Any]) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: the rope_freqs.weight divisors."""
    scaling = config["rope_scaling"]
    dims = config["hidden_size"] // config["num_attention_heads"]
    base = config.get("rope_theta", 10000.0)
    factor, old = scaling["factor"], scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    freqs = 1.0 / (base ** (np.arange(0, dims, 2, dtype=np.float32) / dims))
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def gguf_to_hf_names(model_dir: Path) -> dict[str, str]:
    """GGUF tensor name -> the source model's weight name (gguf-py's TensorNameMap)."""
    config = json.loads((model_dir / "config.json").read_text())
    arch = ARCH[config["model_type"]]
    name_map = gguf.get_tensor_name_map(_MODEL_ARCH[arch], config["num_hidden_layers"])
    names = {}
    for path in sorted(model_dir.glob("model*.safetensors")):
        for hf_name in mx.load(str(path)):
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            assert gguf_name is not None, hf_name
            names[gguf_name] = hf_name
    return names


def _tensors(model_dir: Path, arch: str, config: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    weights = {}
    for path in sorted(model_dir.glob("model*.safetensors")):
        weights.update(mx.load(str(path)))
    name_map = gguf.get_tensor_name_map(_MODEL_ARCH[arch], config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    out = []
    for hf_name in sorted(weights):
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        data = np.array(weights[hf_name].astype(mx.float32))
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            data = llama_permute(data, heads)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            data = llama_permute(data, kv_heads)
        if arch in NORM_SHIFTED and hf_name.endswith("norm.weight"):
            data = data + 1
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        out.append((name, data))
    if (config.get("rope_scaling") or {}).get("rope_type") == "llama3":
        out.append(("rope_freqs.weight", llama3_rope_factors(config)))
    return out


def write_gguf(
    model_dir: Path,
    path: Path,
    qtype: Q = Q.F32,
    *,
    overrides: dict[str, Q] | None = None,
    chat_template: bool = True,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the tiny model at model_dir as a GGUF file of `qtype` (2-D weights); 1-D F32.

    overrides: GGUF tensor name -> a different type for that tensor.
    extra: more tensors, written as given (e.g. a vision tower the converter must skip).
    """
    config = json.loads((model_dir / "config.json").read_text())
    arch = ARCH[config["model_type"]]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(model_dir.name)
    writer.add_file_type(_FILE_TYPE[qtype])
    _hparams_kv(writer, arch, config)
    _tokenizer_kv(writer, model_dir, chat_template)
    for name, data in _tensors(model_dir, arch, config):
        # convert_hf_to_gguf.py prepare_tensors: 1-D tensors and norms stay F32.
        t = (overrides or {}).get(name, qtype)
        if data.ndim <= 1 or name.endswith("_norm.weight") or t == Q.F32:
            writer.add_tensor(name, data.astype(np.float32))
        elif t == Q.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, encode(data, t), raw_dtype=t)
    for name, data in (extra or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, Q]]) -> Path:
    """A minimal GGUF of `arch`: one block, a two-token vocabulary, these tensors."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
