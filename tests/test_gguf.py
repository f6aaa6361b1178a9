"""GGUF -> MLX conversion (workers/gguf.py), end to end with real MLX and mlx-lm.

GGUF files are written in the tests (tests/gguf_fixtures.py) from tiny random models, the
way llama.cpp's convert_hf_to_gguf.py writes them, and converted back; the converted
directory must load in mlx-lm and generate what the source (or, for quantized files, the
GGUF's own dequantized weights) generates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from mlx_lm.sample_utils import make_sampler
from transformers import AutoTokenizer

from ollmlx.gguf_meta import GGML_TYPES, read_header
from ollmlx.templates import families
from tests.gguf_fixtures import (
    encode_q4_k,
    encode_q6_k,
    gguf_to_hf_names,
    llama_permute,
    tiny_gguf,
    write_gguf,
)
from tests.tinymodel import build_tiny_model
from workers import gguf_tensors
from workers.gguf import ConversionError, check_supported, convert, inspect, main
from workers.gguf_arch import REQUANT_BITS

# The architectures the float and Q8_0/Q4_0 tests run on (each a tiny random model).
ARCHS = ["llama", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]
PROMPTS = ["Hello there", "<|user|>\nWhy?<|end|>\n<|assistant|>\n"]
N_TOKENS = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build (once per module) the tiny model of a type and dtype."""
    cache: dict[tuple[str, str], Path] = {}

    def get(model_type: str, dtype: str = "float32") -> Path:
        key = (model_type, dtype)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{model_type}-{dtype}") / "model"
            cache[key] = build_tiny_model(out, model_type=model_type, dtype=dtype)
        return cache[key]

    return get


def _greedy(model: Any, tokenizer: Any, prompt: str) -> list[int]:
    sampler = make_sampler(temp=0.0)
    stream = mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=N_TOKENS, sampler=sampler)
    return [r.token for r in stream]


def _logits(model: Any, tokenizer: Any, prompt: str) -> np.ndarray:
    ids = mx.array([tokenizer.encode(prompt)])
    return np.array(model(ids)[0].astype(mx.float32))


def _dequantized_model(
    gguf_path: Path, source: Path, float_dtype: Any = np.float16
) -> tuple[Any, Any]:
    """The source architecture with the GGUF's weights as gguf-py dequantizes them, with
    llama.cpp's transforms undone here independently of the converter. Float tensors (norms,
    biases: F32 in a quantized file) are rounded to float_dtype, the dtype the converter
    gives a quantized model."""
    model, tokenizer = mlx_lm.load(str(source))
    config = json.loads((source / "config.json").read_text())
    names = gguf_to_hf_names(source)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    weights = []
    for t in gguf.GGUFReader(str(gguf_path)).tensors:
        if t.name not in names:
            continue
        shape = tuple(int(d) for d in reversed(t.shape))
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        hf = names[t.name]
        if config["model_type"] == "llama" and ("q_proj" in hf or "k_proj" in hf):
            order = llama_permute(np.arange(shape[0]), heads if "q_proj" in hf else kv_heads)
            unpermuted = np.empty_like(values)
            unpermuted[order] = values  # GGUF row r holds HF row order[r]
            values = unpermuted
        if config["model_type"] in ("gemma2", "gemma3_text") and hf.endswith("norm.weight"):
            values = values - 1
        if t.tensor_type in (Q.F32, Q.F16):
            values = values.astype(float_dtype).astype(np.float32)
        weights.append((hf, mx.array(values)))
    model.load_weights(weights)  # strict: every weight of the model comes from the GGUF
    return model, tokenizer


# --- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16])
@pytest.mark.parametrize("model_type", ARCHS)
def test_float_gguf_generates_like_the_source(tiny, tmp_path: Path, model_type, qtype) -> None:
    # An F16 file is exact for a float16 source (norms are written F32, from f16 values).
    source = tiny(model_type, "float32" if qtype == Q.F32 else "float16")
    out = convert(write_gguf(source, tmp_path / "m.gguf", qtype), tmp_path / "mlx")
    src_model, src_tok = mlx_lm.load(str(source))
    model, tok = mlx_lm.load(str(out))
    for prompt in PROMPTS:
        expected = _greedy(src_model, src_tok, prompt)
        assert len(set(expected)) > 1  # the tiny models do not just repeat one token
        assert _greedy(model, tok, prompt) == expected
        np.testing.assert_array_equal(
            _logits(model, tok, prompt), _logits(src_model, src_tok, prompt)
        )


def test_bf16_gguf_generates_like_the_source(tiny, tmp_path: Path) -> None:
    source = tiny("llama", "bfloat16")
    out = convert(write_gguf(source, tmp_path / "m.gguf", Q.BF16), tmp_path / "mlx")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    src_model, src_tok = mlx_lm.load(str(source))
    model, tok = mlx_lm.load(str(out))
    for prompt in PROMPTS:
        assert _greedy(model, tok, prompt) == _greedy(src_model, src_tok, prompt)


def test_a_vision_tower_is_skipped_and_the_text_model_converted(tiny, tmp_path: Path) -> None:
    # Ollama's gemma3 files carry the vision tower and projector in the same GGUF.
    source = tiny("gemma3_text")
    vision = {
        "v.patch_embd.weight": np.zeros((8, 3, 4, 4), dtype=np.float32),
        "v.blk.0.attn_q.weight": np.zeros((8, 8), dtype=np.float16),
        "mm.input_projection.weight": np.zeros((64, 8), dtype=np.float32),
    }
    path = write_gguf(source, tmp_path / "m.gguf", Q.Q8_0, extra=vision)
    info = inspect(path)
    assert info.has_vision and check_supported(info) is None
    out = convert(path, tmp_path / "mlx")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert not [n for n in index["weight_map"] if "patch" in n or "projection" in n]
    mlx_lm.load(str(out))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
@pytest.mark.parametrize("model_type", ARCHS)
def test_quantized_gguf_generates_like_its_dequantized_weights(
    tiny, tmp_path: Path, model_type, qtype
) -> None:
    source = tiny(model_type)
    path = write_gguf(source, tmp_path / "m.gguf", qtype)
    out = convert(path, tmp_path / "mlx")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == (8 if qtype == Q.Q8_0 else 4)
    oracle, oracle_tok = _dequantized_model(path, source)
    model, tok = mlx_lm.load(str(out))
    for prompt in PROMPTS:
        # As converted (float16 activations) against the float32 oracle: close, not equal.
        want = _logits(oracle, oracle_tok, prompt)
        assert np.abs(_logits(model, tok, prompt) - want).max() < 0.02 * np.abs(want).max()
    # In float32 the f16 scales and biases are exact, so the converted model computes with
    # exactly the GGUF's dequantized weights (its float tensors in float16): same logits,
    # same greedy tokens.
    model.set_dtype(mx.float32)
    for prompt in PROMPTS:
        want = _logits(oracle, oracle_tok, prompt)
        np.testing.assert_allclose(_logits(model, tok, prompt), want, atol=1e-4, rtol=1e-5)
        assert _greedy(model, tok, prompt) == _greedy(oracle, oracle_tok, prompt)


def test_llama3_rope_frequencies_come_through(tiny, tmp_path: Path) -> None:
    # A Llama 3.1-style rope_scaling becomes a rope_freqs.weight tensor in the GGUF (llama.cpp
    # has no metadata key for it); the converter must recover an equivalent rope_scaling.
    source = tmp_path / "src"
    base = tiny("llama")
    source.mkdir()
    for f in base.iterdir():
        (source / f.name).write_bytes(f.read_bytes())
    config = json.loads((source / "config.json").read_text())
    config["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    (source / "config.json").write_text(json.dumps(config))
    path = write_gguf(source, tmp_path / "m.gguf")
    assert read_header(path).tensor("rope_freqs.weight") is not None
    out = convert(path, tmp_path / "mlx")
    assert json.loads((out / "config.json").read_text())["rope_scaling"]["rope_type"] == "llama3"
    src_model, src_tok = mlx_lm.load(str(source))
    model, tok = mlx_lm.load(str(out))
    # A long prompt, so the scaled low frequencies matter.
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    np.testing.assert_allclose(
        _logits(model, tok, prompt), _logits(src_model, src_tok, prompt), atol=1e-3
    )
    assert _greedy(model, tok, prompt) == _greedy(src_model, src_tok, prompt)


def test_large_models_are_sharded(tiny, tmp_path: Path) -> None:
    source = tiny("llama")
    out = convert(write_gguf(source, tmp_path / "m.gguf"), tmp_path / "mlx", shard_bytes=200_000)
    shards = sorted(p.name for p in out.glob("model*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    src_model, src_tok = mlx_lm.load(str(source))
    model, tok = mlx_lm.load(str(out))
    assert _greedy(model, tok, PROMPTS[0]) == _greedy(src_model, src_tok, PROMPTS[0])


# --- quantized tensors ------------------------------------------------------------------------


def _q_values(weight: mx.array, bits: int) -> np.ndarray:
    """The integers of a packed MLX weight, read by MLX itself (scale 1, bias 0)."""
    rows, cols = weight.shape[0], weight.shape[1] * 32 // bits
    ones = mx.ones((rows, cols // 32))
    return np.array(mx.dequantize(weight, ones, mx.zeros_like(ones), group_size=32, bits=bits))


def _expected_blocks(raw: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integers, scales and biases of Q4_0/Q4_1/Q8_0 blocks, decoded from ggml's layouts."""
    blocks = raw.reshape(-1, GGML_TYPES[qtype.value][2])
    d = blocks[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32)
    if qtype == Q.Q8_0:
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float32) + 128
        return q, d, -128 * d
    qs = blocks[:, 4:] if qtype == Q.Q4_1 else blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # values i, i + 16
    if qtype == Q.Q4_1:
        return q, d, blocks[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32)
    return q, d, -8 * d


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_quantized_tensors_keep_their_blocks_bit_for_bit(tiny, tmp_path: Path, qtype) -> None:
    source = tiny("llama")  # llama: the Q/K rows are also permuted back, blocks intact
    path = write_gguf(source, tmp_path / "m.gguf", qtype)
    out = convert(path, tmp_path / "mlx")
    converted = mx.load(str(out / "model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    names = gguf_to_hf_names(source)
    checked = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.tensor_type != qtype:
            continue
        module = names[t.name].removesuffix(".weight")
        rows = t.data.shape[0]
        q, d, b = _expected_blocks(np.asarray(t.data), qtype)
        q, d, b = q.reshape(rows, -1), d.reshape(rows, -1), b.reshape(rows, -1)
        if "q_proj" in module or "k_proj" in module:
            heads = config["num_attention_heads" if "q_proj" in module else "num_key_value_heads"]
            order = llama_permute(np.arange(rows), heads)
            q, d, b = _rows(order, q, d, b)
        bits = 8 if qtype == Q.Q8_0 else 4
        np.testing.assert_array_equal(_q_values(converted[f"{module}.weight"], bits), q)
        np.testing.assert_array_equal(np.array(converted[f"{module}.scales"]), d)
        np.testing.assert_array_equal(np.array(converted[f"{module}.biases"]), b)
        checked += 1
    assert checked == 2 * 7 + 2  # every layer matrix, the embedding and the output


def _rows(order: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    out = []
    for a in arrays:
        hf = np.empty_like(a)
        hf[order] = a
        out.append(hf)
    return tuple(out)


def _random_blocks(type_name: str, rows: int = 32, cols: int = 1024) -> np.ndarray:
    """Random bytes as blocks of a kind, keeping blocks whose values are finite and sane."""
    _, block, size = next(v for v in GGML_TYPES.values() if v[0] == type_name)
    rng = np.random.default_rng(sum(map(ord, type_name)))
    kept: list[np.ndarray] = []
    while len(kept) < rows * cols // block:
        raw = rng.integers(0, 256, size=(4096, size), dtype=np.uint8)
        with np.errstate(all="ignore"):
            values = gguf_tensors.dequantize(raw, type_name)
            peak = np.abs(values).max(axis=1)
        ok = np.isfinite(values).all(axis=1) & (peak > 1e-3) & (peak < 1e3)
        kept.extend(raw[ok])
    return np.array(kept[: rows * cols // block]).reshape(rows, -1)


def _relative_error(converted: gguf_tensors.Quantized, reference: np.ndarray) -> float:
    """RMS error over RMS value, each row scaled to its peak first (rows weigh the same)."""
    deq = mx.dequantize(
        converted.weight,
        converted.scales.astype(mx.float32),
        converted.biases.astype(mx.float32),
        group_size=converted.group_size,
        bits=converted.bits,
    )
    peak = np.abs(reference).max(axis=1, keepdims=True)
    err = (np.array(deq) - reference) / peak
    return float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean((reference / peak) ** 2)))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K"])
def test_affine_kinds_keep_their_values_exactly(type_name: str) -> None:
    raw = _random_blocks(type_name)
    converted = gguf_tensors.convert_matrix(raw, type_name, mx.float32, True)
    assert isinstance(converted, gguf_tensors.Quantized)
    reference = gguf_tensors.dequantize(raw, type_name)
    deq = mx.dequantize(
        converted.weight, converted.scales, converted.biases, group_size=32, bits=converted.bits
    )
    np.testing.assert_array_equal(np.array(deq), reference)


# Re-quantization error (relative RMS, rows weighted equally) of each re-quantized kind
# against gguf-py's dequantization of random blocks, as measured, with a margin.
REQUANT_ERROR = {
    "Q2_K": 0.050,
    "Q3_K": 0.040,
    "Q6_K": 0.006,
    "IQ1_S": 0.030,
    "IQ1_M": 0.040,
    "IQ2_XXS": 0.045,
    "IQ2_XS": 0.050,
    "IQ2_S": 0.050,
    "IQ3_XXS": 0.040,
    "IQ3_S": 0.045,
    "IQ4_NL": 0.035,
    "IQ4_XS": 0.035,
    "TQ1_0": 0.050,
    "TQ2_0": 1e-6,  # {-1, 0, 1, 2} * d: on the 2-bit grid exactly
    "MXFP4": 0.050,
    "NVFP4": 0.050,
}


@pytest.mark.parametrize("type_name", sorted(REQUANT_BITS))
def test_requantized_kinds_stay_within_their_error_bound(type_name: str) -> None:
    raw = _random_blocks(type_name)
    converted = gguf_tensors.convert_matrix(raw, type_name, mx.float16, True)
    assert isinstance(converted, gguf_tensors.Quantized)
    assert converted.bits == REQUANT_BITS[type_name]
    error = _relative_error(converted, gguf_tensors.dequantize(raw, type_name))
    assert error <= REQUANT_ERROR[type_name], f"{type_name}: {error:.4f}"


def test_hand_written_k_quant_blocks_dequantize_and_convert() -> None:
    # Gaussian weights (as a trained matrix has), encoded by hand in ggml's Q4_K and Q6_K
    # layouts: gguf-py must decode them to about the source, and the converter must keep
    # Q4_K's integers (only d*sc and dmin*m round to float16) and re-quantize Q6_K to 8 bits.
    x = np.random.default_rng(1).standard_normal((16, 512)).astype(np.float32)
    bounds = {"Q4_K": (0.10, 0.0, 1e-3), "Q6_K": (0.025, 0.006, 0.006)}
    for type_name, encode in (("Q4_K", encode_q4_k), ("Q6_K", encode_q6_k)):
        raw = encode(x)
        assert raw.shape[1] == x.shape[1] // 256 * GGML_TYPES[Q[type_name].value][2]
        reference = gguf_tensors.dequantize(raw, type_name)
        own = np.sqrt(np.mean((reference - x) ** 2) / np.mean(x**2))
        source_bound, f32_bound, f16_bound = bounds[type_name]
        assert own < source_bound  # the encoder is right: gguf-py reads back about x
        for dtype, bound in ((mx.float32, f32_bound), (mx.float16, f16_bound)):
            converted = gguf_tensors.convert_matrix(raw, type_name, dtype, True)
            assert _relative_error(converted, reference) <= bound


def test_k_quant_model_converts_and_runs(tmp_path: Path) -> None:
    # Rows of 256 for K-quants: a wider tiny llama, Q4_K with Q6_K for ffn_down and output
    # (the shape of llama.cpp's Q4_K_M mix).
    source = build_tiny_model(
        tmp_path / "src", hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512
    )
    overrides = {"output.weight": Q.Q6_K} | {f"blk.{i}.ffn_down.weight": Q.Q6_K for i in range(2)}
    path = write_gguf(source, tmp_path / "m.gguf", Q.Q4_K, overrides=overrides)
    info = inspect(path)
    assert (info.file_type, info.tensor_types["Q6_K"]) == ("Q4_K_M", 3)
    out = convert(path, tmp_path / "mlx")
    quantization = json.loads((out / "config.json").read_text())["quantization"]
    assert quantization["lm_head"]["bits"] == 8
    assert quantization["model.layers.0.mlp.down_proj"]["bits"] == 8
    assert quantization["model.layers.0.mlp.up_proj"]["bits"] == 4
    oracle, oracle_tok = _dequantized_model(path, source)
    model, tok = mlx_lm.load(str(out))
    got, want = _logits(model, tok, PROMPTS[0]), _logits(oracle, oracle_tok, PROMPTS[0])
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert len(_greedy(model, tok, PROMPTS[0])) == N_TOKENS


# --- tokenizer and chat template ---------------------------------------------------------------

TEXTS = [
    "Hello world",
    "héllo wörld ✓ café naïve",
    "The cat runs.\n\tTabs 123 456789 日本 中文 😀🚀",
    "  leading and trailing spaces  ",
    "<|user|>\nspecial tokens inside<|end|>\n<|assistant|>\n",
    "",
    "€½° \u2014 \u201cquotes\u201d and \u2018more\u2019",
]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_tokenizer_encodes_like_the_source(tiny, tmp_path: Path, model_type: str) -> None:
    source = tiny(model_type)
    out = convert(write_gguf(source, tmp_path / "m.gguf"), tmp_path / "mlx")
    theirs = AutoTokenizer.from_pretrained(str(source))
    ours = AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    for name in ("bos_token", "eos_token", "pad_token"):
        assert getattr(ours, name) == getattr(theirs, name)
    assert len(ours) == len(theirs)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == theirs.eos_token_id


def test_a_sentencepiece_vocabulary_rebuilds_with_byte_fallback_and_bos() -> None:
    # llama.cpp's "llama" tokenizer (sentencepiece): <unk>, <s>, </s>, 256 byte tokens, pieces.
    from workers.gguf_tokenizer import build

    pieces = ["\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"]
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"]
        + [f"<0x{i:02X}>" for i in range(256)]
        + pieces,
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(1, 7)],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * 6,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    tokenizer = build("llama", metadata)
    encoded = tokenizer.encode("a ab é")
    assert encoded.tokens[:3] == ["<s>", "\u2581a", "\u2581ab"]  # BOS: llama.cpp's default
    assert encoded.tokens[-2:] == ["<0xC3>", "<0xA9>"]  # é from its UTF-8 bytes
    assert tokenizer.decode(encoded.ids) == "a ab é"
    no_bos = build("llama", {**metadata, "tokenizer.ggml.add_bos_token": False})
    assert no_bos.encode("a").tokens == ["\u2581a"]


def test_chat_template_comes_through(tiny, tmp_path: Path) -> None:
    source = tiny("qwen2")
    out = convert(write_gguf(source, tmp_path / "m.gguf"), tmp_path / "mlx")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there ✓"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    _, theirs = mlx_lm.load(str(source))
    _, ours = mlx_lm.load(str(out))
    render = {"tokenize": False, "add_generation_prompt": True}
    prompt = ours.apply_chat_template(messages, **render)
    assert prompt == theirs.apply_chat_template(messages, **render)
    assert ours.encode(prompt, add_special_tokens=False) == theirs.encode(
        prompt, add_special_tokens=False
    )


def test_go_template_is_used_when_the_gguf_has_none(tiny, tmp_path: Path) -> None:
    source = tiny("qwen2")
    path = write_gguf(source, tmp_path / "m.gguf", chat_template=False)
    assert inspect(path).chat_template is None
    chatml = families()["chatml"]
    out = convert(path, tmp_path / "mlx", go_template=chatml["go_templates"][0])
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chatml["jinja"]  # the tokenizer adds no BOS
    _, tok = mlx_lm.load(str(out))
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_an_unknown_go_template_is_refused_before_any_work(tiny, tmp_path: Path) -> None:
    path = write_gguf(tiny("qwen2"), tmp_path / "m.gguf", chat_template=False)
    with pytest.raises(ConversionError, match="no known chat template family") as err:
        convert(path, tmp_path / "mlx", go_template="### Instruction:\n{{ .Prompt }}\n")
    assert err.value.unsupported
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


# --- refusals and failures ---------------------------------------------------------------------


def test_an_unsupported_architecture_is_refused_before_any_work(tmp_path: Path) -> None:
    data = np.zeros((4, 32), dtype=np.float32)
    path = tiny_gguf(tmp_path / "m.gguf", "mamba", {"token_embd.weight": (data, Q.F32)})
    reason = check_supported(inspect(path))
    assert reason is not None and "'mamba' is not converted yet" in reason
    with pytest.raises(ConversionError, match="'mamba'") as err:
        convert(path, tmp_path / "mlx")
    assert err.value.unsupported
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_an_unrunnable_tensor_type_is_refused_before_any_work(tmp_path: Path) -> None:
    # Q8_K is llama.cpp's activation type: gguf-py cannot dequantize it, MLX cannot run it.
    blocks = np.zeros((4, 292), dtype=np.uint8)
    path = tiny_gguf(tmp_path / "m.gguf", "llama", {"token_embd.weight": (blocks, Q.Q8_K)})
    assert "tensor type Q8_K cannot be run" in (check_supported(inspect(path)) or "")
    with pytest.raises(ConversionError, match="Q8_K") as err:
        convert(path, tmp_path / "mlx")
    assert err.value.unsupported


def test_a_conversion_failing_midway_leaves_nothing(tiny, tmp_path: Path) -> None:
    path = write_gguf(tiny("llama"), tmp_path / "m.gguf")
    # NaNs in a late tensor: caught after the first tensors are written.
    header = read_header(path)
    bad = header.tensors[-1]
    with path.open("r+b") as f:
        f.seek(header.data_offset + bad.offset)
        f.write(np.full(bad.n_elements, np.nan, dtype=np.float32).tobytes())
    seen: list[tuple[int, int]] = []
    with pytest.raises(ConversionError, match=bad.name) as err:
        convert(path, tmp_path / "mlx", progress=lambda done, total: seen.append((done, total)))
    assert not err.value.unsupported
    assert seen and seen[-1][0] < seen[-1][1]  # it did fail midway
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_an_existing_out_dir_is_not_touched(tiny, tmp_path: Path) -> None:
    (tmp_path / "mlx").mkdir()
    (tmp_path / "mlx" / "keep").write_text("x")
    with pytest.raises(ConversionError, match="already exists"):
        convert(write_gguf(tiny("llama"), tmp_path / "m.gguf"), tmp_path / "mlx")
    assert [p.name for p in (tmp_path / "mlx").iterdir()] == ["keep"]


# --- the child process ---------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollmlx_worker.gguf", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_entry_point_streams_progress_and_succeeds(tiny, tmp_path: Path) -> None:
    path = write_gguf(tiny("llama"), tmp_path / "m.gguf", Q.Q8_0)
    done = _run(str(path), str(tmp_path / "mlx"))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    total = len(read_header(path).tensors)
    assert lines[0] == {"status": "converting gguf"}
    assert lines[1:-1] == [
        {"status": "converting gguf", "completed": n, "total": total} for n in range(1, total + 1)
    ]
    assert lines[-1] == {"status": "success"}
    mlx_lm.load(str(tmp_path / "mlx"))


def test_entry_point_exits_2_for_unsupported_files(tmp_path: Path) -> None:
    data = np.zeros((4, 32), dtype=np.float32)
    path = tiny_gguf(tmp_path / "m.gguf", "mamba", {"token_embd.weight": (data, Q.F32)})
    done = _run(str(path), str(tmp_path / "mlx"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: GGUF architecture 'mamba'")
    assert not (tmp_path / "mlx").exists()
    check = _run(str(path), "--check")
    assert check.returncode == 2
    assert json.loads(check.stdout)["architecture"] == "mamba"


def test_entry_point_exits_1_for_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00")
    done = _run(str(path), str(tmp_path / "mlx"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: truncated GGUF file")


def test_inspecting_needs_neither_mlx_nor_numpy() -> None:
    code = (
        "import sys, ollmlx_worker.gguf; "
        "print([m for m in ('mlx', 'numpy', 'transformers', 'gguf') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_main_in_process_reports_facts(tiny, tmp_path: Path, capsys) -> None:
    path = write_gguf(tiny("gemma3_text"), tmp_path / "m.gguf", Q.Q8_0)
    assert main([str(path), "--check"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["architecture"] == "gemma3"
    assert facts["model_type"] == "gemma3_text"
    assert facts["file_type"] == "Q8_0"
    assert facts["chat_template"] is True and facts["problem"] is None
