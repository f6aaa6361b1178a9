"""One GGUF tensor -> MLX arrays: a float array, or an MLX affine-quantized triplet.

- Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 blocks are affine over 32 values with an f16 scale, so
  they become MLX triplets (packed uint32 `weight`, `scales`, `biases`, group size 32) bit
  for bit: the same integers, the same scale, and a bias that is exactly the block's offset.
- Q4_K and Q5_K are affine over sub-blocks of 32 too (scale d*sc, offset -dmin*m); they keep
  their integers, and only the products d*sc and dmin*m are rounded to the model's dtype.
- Every other kind (Q2_K, Q3_K, Q6_K, IQ*, TQ*, MXFP4, ...) is dequantized with gguf-py and
  re-quantized to MLX affine at the bit width in REQUANT_BITS.
- F32, F16 and BF16 stay float (cast to the model's dtype).

The block layouts are read from gguf-py's quants.py (`dequantize_blocks` of each class),
itself a port of ggml-quants.c; MLX packs `bits`-wide integers as a little-endian bit stream
into uint32 words (checked against mx.dequantize in tests/test_gguf.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType, quants

from ollmlx.gguf_meta import GGML_TYPES

from .gguf_arch import AFFINE_BITS, FLOAT_KINDS, REQUANT_BITS

GROUP_SIZE = 32
# Rows converted at a time: bounds the float32 scratch memory of a large tensor.
_ROW_CHUNK = 1024


@dataclass
class Quantized:
    weight: mx.array  # uint32, (rows, cols * bits / 32)
    scales: mx.array  # (rows, cols / group_size)
    biases: mx.array
    bits: int
    group_size: int = GROUP_SIZE


Converted = mx.array | Quantized


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4 layout (ggml block_q4_0): byte i holds value i (low nibble) and value i+16 (high)."""
    n = qs.shape[0]
    q = qs.reshape(n, 1, -1) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)
    return (q & 0x0F).reshape(n, -1)


def _high_bits_32(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: bit j of the little-endian u32 `qh` is the fifth bit of value j."""
    n = qh.shape[0]
    bits = qh.copy().view("<u4").reshape(n, 1) >> np.arange(32, dtype=np.uint32).reshape(1, 32)
    return (bits & 1).astype(np.uint8)


def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view("<f2").astype(np.float32).reshape(raw.shape[0], 1)


# Each takes blocks (n_blocks, block_bytes) and returns per group of 32: the unsigned integers
# (n_groups, 32), the scale (n_groups,) and the bias (n_groups,), so value = scale * q + bias.
def _q4_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(b[:, 0:2])
    return _nibbles(b[:, 2:]), d[:, 0], -8 * d[:, 0]


def _q4_1(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _nibbles(b[:, 4:]), _f16(b[:, 0:2])[:, 0], _f16(b[:, 2:4])[:, 0]


def _q5_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(b[:, 0:2])[:, 0]
    q = _nibbles(b[:, 6:]) | (_high_bits_32(b[:, 2:6]) << 4)
    return q, d, -16 * d


def _q5_1(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = _nibbles(b[:, 8:]) | (_high_bits_32(b[:, 4:8]) << 4)
    return q, _f16(b[:, 0:2])[:, 0], _f16(b[:, 2:4])[:, 0]


def _q8_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(b[:, 0:2])[:, 0]
    q = (b[:, 2:].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return q, d, -128 * d


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: the 8 sub-block scales and offsets (d*sc, dmin*m), as in gguf-py's Q4_K."""
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = quants.Q4_K.get_scale_min(b[:, 4:16])
    return (d * sc.astype(np.float32)).reshape(-1), (dmin * m.astype(np.float32)).reshape(-1)


def _k_low_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: 32-byte chunks; low nibbles are sub-block 2c, high nibbles sub-block 2c+1."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n * 8, 32)


def _q4_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale, offset = _k_scales(b)
    return _k_low_nibbles(b[:, 16:]), scale, -offset


def _q5_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale, offset = _k_scales(b)
    n = b.shape[0]
    qh = b[:, 16:48].reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
    high = (qh & 1).reshape(n * 8, 32)
    return _k_low_nibbles(b[:, 48:]) | (high << 4), scale, -offset


# Kind -> its block decoder.
DECODERS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
}
# The kinds whose scale and bias are the file's own f16 values: their triplets are the
# blocks bit for bit (K-quants multiply two of them, which the model's dtype rounds).
BIT_EXACT = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"})
_BLOCK_BYTES = {name: size for name, _, size in GGML_TYPES.values()}


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned `bits`-wide integers (rows, cols) -> MLX's packed uint32 (rows, cols*bits/32)."""
    rows, cols = q.shape
    if bits == 8:
        return np.ascontiguousarray(q.astype(np.uint8)).view("<u4")
    if bits == 4:
        q = q.astype(np.uint8)
        return np.ascontiguousarray(q[:, 0::2] | (q[:, 1::2] << 4)).view("<u4")
    stream = np.unpackbits(q.astype(np.uint8)[..., None], axis=-1, bitorder="little")[..., :bits]
    packed = np.packbits(stream.reshape(rows, cols * bits), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4")


def kind_of(type_name: str) -> str:
    """How a kind converts: 'float', 'affine' (kept), 'requant', or 'unsupported'."""
    if type_name in FLOAT_KINDS:
        return "float"
    if type_name in AFFINE_BITS:
        return "affine"
    if type_name in REQUANT_BITS:
        return "requant"
    return "unsupported"


def dequantize(raw: np.ndarray, type_name: str) -> np.ndarray:
    """gguf-py's dequantization of raw rows (rows, row_bytes) -> float32 (rows, row_length)."""
    raw = np.ascontiguousarray(raw)
    if type_name == "F64":  # gguf-py has no F64 kernel; it is plain little-endian doubles
        return raw.view("<f8").astype(np.float32)
    return np.asarray(quants.dequantize(raw, GGMLQuantizationType[type_name]), dtype=np.float32)


def _affine_rows(raw: np.ndarray, type_name: str, dtype: mx.Dtype) -> Quantized:
    bits, decode = AFFINE_BITS[type_name], DECODERS[type_name]
    rows = raw.shape[0]
    q, scale, bias = decode(np.ascontiguousarray(raw).reshape(-1, _BLOCK_BYTES[type_name]))
    n_groups = q.shape[0] // rows
    packed = pack(q.reshape(rows, n_groups * GROUP_SIZE), bits)
    return Quantized(
        mx.array(packed),
        mx.array(scale.reshape(rows, n_groups)).astype(dtype),
        mx.array(bias.reshape(rows, n_groups)).astype(dtype),
        bits,
    )


def _requant_rows(values: np.ndarray, bits: int, dtype: mx.Dtype) -> Quantized:
    w, scales, biases = mx.quantize(mx.array(values).astype(dtype), GROUP_SIZE, bits)
    return Quantized(w, scales, biases, bits)


def _concat(parts: list[Quantized]) -> Quantized:
    if len(parts) == 1:
        return parts[0]
    return Quantized(
        mx.concatenate([p.weight for p in parts]),
        mx.concatenate([p.scales for p in parts]),
        mx.concatenate([p.biases for p in parts]),
        parts[0].bits,
    )


def convert_matrix(raw: np.ndarray, type_name: str, dtype: mx.Dtype, quantize: bool) -> Converted:
    """Convert a 2-D tensor's raw rows (rows, row_bytes) to MLX.

    quantize: keep a quantized source quantized (False for tensors MLX cannot quantize:
    rows not a multiple of the group size, or modules that are not Linear/Embedding).
    """
    kind = kind_of(type_name)
    if kind == "unsupported":
        raise ValueError(f"tensor type {type_name} cannot be converted")
    if kind == "float" or not quantize:
        return to_float(raw, type_name, dtype)
    parts = []
    for start in range(0, raw.shape[0], _ROW_CHUNK):
        chunk = raw[start : start + _ROW_CHUNK]
        if kind == "affine":
            parts.append(_affine_rows(chunk, type_name, dtype))
        else:
            parts.append(
                _requant_rows(dequantize(chunk, type_name), REQUANT_BITS[type_name], dtype)
            )
        mx.eval(parts[-1].weight, parts[-1].scales, parts[-1].biases)
    return _concat(parts)


def to_float(raw: np.ndarray, type_name: str, dtype: mx.Dtype) -> mx.array:
    """Any kind -> a float array of the model's dtype (F16/F32 without a float32 detour)."""
    if type_name == "F16" and dtype == mx.float16:
        return mx.array(np.ascontiguousarray(raw).view("<f2"))
    if type_name == "F32":
        return mx.array(np.ascontiguousarray(raw).view("<f4")).astype(dtype)
    parts = [
        mx.array(dequantize(raw[start : start + _ROW_CHUNK], type_name)).astype(dtype)
        for start in range(0, raw.shape[0], _ROW_CHUNK)
    ]
    out = parts[0] if len(parts) == 1 else mx.concatenate(parts)
    mx.eval(out)
    return out
