"""Read a GGUF file's header (metadata and tensor table) with `struct` only, never its tensors.

A leaf module: the supervisor uses it for /api/tags and /api/show without importing MLX or
numpy, and the converter (workers/gguf.py) reads its metadata through it too.

The format (ggml's docs/gguf.md, gguf-py's gguf_reader.py, Ollama's fs/ggml/gguf.go):
    magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
    metadata: (string key, u32 value type, value)...,
    tensor infos: (string name, u32 n_dims, u64 dims..., u32 ggml type, u64 offset)...,
    padding to `general.alignment` (default 32), then the tensor data.
Strings are a u64 length then UTF-8 bytes; arrays a u32 item type, a u64 count, the items.

Every length and count is checked against the bytes left in the file (and against Ollama's
caps) before anything is allocated, so a hostile or truncated file fails fast with
GGUFError, never with a MemoryError or a long loop.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import StatusError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Caps from Ollama's fs/gguf/gguf.go (MaxStringLength, MaxArraySize, MaxTensorDims).
MAX_STRING_LENGTH = 16 << 20
MAX_ARRAY_LENGTH = 64 << 20
MAX_TENSOR_DIMS = 4
# Far above any real file (the largest MoE files hold ~100k tensors), far below a hostile count.
MAX_TENSORS = 1 << 22
MAX_METADATA = 1 << 22

# ggml tensor types: id -> (name, elements per block, bytes per block).
# From gguf-py constants.py GGML_QUANT_SIZES (ggml.h's ggml_type); ids 4, 5, 31-33, 36-38
# were removed from ggml and never appear in GGUF files.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}

# `general.file_type` (llama.h's llama_ftype) -> the name Ollama shows as quantization level
# (Ollama fs/ggml/type.go FileType.String; gguf-py LlamaFileType).
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
}

# Metadata value types: id -> struct format (little-endian); 8 = string, 9 = array.
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# Smallest encoding of one tensor info: name length, n_dims, type, offset (no name, no dims).
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8
# Smallest encoding of one metadata pair: key length, value type, a one-byte value.
_MIN_KV = 8 + 4 + 1


# llama.cpp's default for add_bos_token when the file does not say (src/llama-vocab.cpp:
# sentencepiece vocabularies add BOS, and so do the BPE pre-tokenizers of the Llama 3 family).
_BOS_BY_DEFAULT_PRE = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe"})


def add_bos(metadata: dict[str, Any]) -> bool:
    value = metadata.get("tokenizer.ggml.add_bos_token")
    if isinstance(value, bool):
        return value
    model = metadata.get("tokenizer.ggml.model")
    return model == "llama" or metadata.get("tokenizer.ggml.pre") in _BOS_BY_DEFAULT_PRE


class GGUFError(StatusError, ValueError):
    """Not a GGUF file this reader accepts (wrong magic, truncated, hostile): a 400."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status)


@dataclass(frozen=True)
class GGUFArray:
    """An array left unread (longer than read_header's array_limit): item type and length."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the fastest-varying (row length)
    type_id: int
    offset: int  # from the start of the tensor data

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]

    @property
    def n_elements(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def n_bytes(self) -> int:
        _, block, size = GGML_TYPES[self.type_id]
        return self.n_elements // block * size


@dataclass
class GGUFHeader:
    path: str
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int  # absolute file offset of the tensor data
    file_size: int
    alignment: int = DEFAULT_ALIGNMENT
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorInfo | None:
        return self._by_name.get(name)

    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else ""

    def arch_value(self, key: str, default: Any = None) -> Any:
        """`<architecture>.<key>`, e.g. arch_value("context_length")."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def parameter_count(self) -> int:
        # Ollama counts every tensor's elements (fs/ggml/gguf.go Decode).
        return sum(t.n_elements for t in self.tensors)

    @property
    def file_type(self) -> str:
        """The quantization level Ollama shows: `general.file_type`, else the dominant type."""
        value = self.metadata.get("general.file_type")
        if isinstance(value, int) and value in FILE_TYPES:
            return FILE_TYPES[value]
        # No (or an unknown) file type: name the type holding most matrix elements.
        counts: Counter[str] = Counter()
        for t in self.tensors:
            if len(t.shape) >= 2:
                counts[t.type_name] += t.n_elements
        return counts.most_common(1)[0][0] if counts else "unknown"

    @property
    def context_length(self) -> int:
        value = self.arch_value("context_length", 0)
        return value if isinstance(value, int) else 0

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value else None

    @property
    def add_bos(self) -> bool:
        """Whether tokenizing adds BOS (tokenizer.ggml.add_bos_token, else llama.cpp's
        default: sentencepiece vocabularies and the Llama 3 family's BPE add it)."""
        return add_bos(self.metadata)

    @property
    def tensor_types(self) -> dict[str, int]:
        """How many tensors of each ggml type the file holds."""
        return dict(Counter(t.type_name for t in self.tensors))


class _Reader:
    """Sequential reads that never ask for more than the file has left."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.pos = 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise GGUFError(f"truncated GGUF file: {what} needs {n} bytes, {self.left} left")
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFError(f"truncated GGUF file while reading {what}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.left:
            raise GGUFError(f"truncated GGUF file: {what} needs {n} bytes, {self.left} left")
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", what))

    def length(self, what: str, cap: int, item_size: int = 1) -> int:
        """A u64 count of items of at least item_size bytes, checked before any allocation."""
        n = self.u64(what)
        if n > cap:
            raise GGUFError(f"invalid GGUF file: {what} {n} exceeds the maximum {cap}")
        if n * item_size > self.left:
            raise GGUFError(
                f"truncated GGUF file: {what} {n} needs {n * item_size} bytes, {self.left} left"
            )
        return n

    def string(self, what: str) -> str:
        n = self.length(f"{what} length", MAX_STRING_LENGTH)
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFError(f"invalid GGUF file: {what} is not UTF-8") from exc

    def skip_string(self, what: str) -> None:
        self.skip(self.length(f"{what} length", MAX_STRING_LENGTH), what)


def _short_f32(x: float) -> float:
    """The shortest decimal that is the same float32: 1e-05, not 9.999999747378752e-06."""
    packed = struct.pack("<f", x)
    for digits in range(1, 10):
        candidate = float(f"{x:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return x


def _read_value(r: _Reader, value_type: int, key: str, array_limit: int | None) -> Any:
    if value_type == 6:  # float32: keep config.json values as the converter wrote them
        return _short_f32(r.unpack("<f", key))
    if value_type in _SCALARS:
        return r.unpack(_SCALARS[value_type], key)
    if value_type == _STRING:
        return r.string(key)
    if value_type != _ARRAY:
        raise GGUFError(f"invalid GGUF file: {key} has unknown value type {value_type}")
    item_type = r.u32(f"{key} item type")
    if item_type in _SCALARS:
        fmt = _SCALARS[item_type]
        size = struct.calcsize(fmt)
        n = r.length(f"{key} array length", MAX_ARRAY_LENGTH, size)
        if array_limit is not None and n > array_limit:
            r.skip(n * size, key)
            return GGUFArray(item_type, n)
        data = r.take(n * size, key)
        return list(struct.unpack(f"<{n}{fmt[1]}", data))
    if item_type == _STRING:
        # Each string takes at least its 8-byte length.
        n = r.length(f"{key} array length", MAX_ARRAY_LENGTH, 8)
        if array_limit is not None and n > array_limit:
            for _ in range(n):
                r.skip_string(key)
            return GGUFArray(item_type, n)
        return [r.string(key) for _ in range(n)]
    # Nested arrays are valid in the spec but unused; Ollama and llama.cpp reject them too.
    raise GGUFError(f"invalid GGUF file: {key} is an array of unsupported type {item_type}")


def _read_tensor_info(r: _Reader, index: int) -> TensorInfo:
    name = r.string(f"tensor {index} name")
    n_dims = r.u32(f"tensor {name} dimension count")
    if not 1 <= n_dims <= MAX_TENSOR_DIMS:
        raise GGUFError(f"invalid GGUF file: tensor {name} has {n_dims} dimensions")
    shape = tuple(r.u64(f"tensor {name} shape") for _ in range(n_dims))
    type_id = r.u32(f"tensor {name} type")
    offset = r.u64(f"tensor {name} offset")
    if type_id not in GGML_TYPES:
        raise GGUFError(f"invalid GGUF file: tensor {name} has unknown type {type_id}")
    block = GGML_TYPES[type_id][1]
    if shape[0] % block:
        raise GGUFError(
            f"invalid GGUF file: tensor {name} row length {shape[0]} is not a multiple of "
            f"its {GGML_TYPES[type_id][0]} block size {block}"
        )
    return TensorInfo(name, shape, type_id, offset)


def _parse(f: BinaryIO, size: int, array_limit: int | None, path: str) -> GGUFHeader:
    r = _Reader(f, size)
    if size < 4 or r.take(4, "magic") != MAGIC:
        raise GGUFError("not a GGUF file (bad magic)")
    version = r.u32("version")
    if version == 1:
        raise GGUFError("GGUF version 1 files are not supported (re-convert with llama.cpp)")
    if version not in (2, 3):
        # A big-endian file reads its version byte-swapped (e.g. 0x03000000).
        raise GGUFError(f"unsupported GGUF version {version} (big-endian files are not supported)")
    n_tensors = r.length("tensor count", MAX_TENSORS, _MIN_TENSOR_INFO)
    n_kv = r.length("metadata count", MAX_METADATA, _MIN_KV)

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key {i}")
        value_type = r.u32(f"{key} type")
        if key in metadata:
            raise GGUFError(f"invalid GGUF file: duplicate metadata key {key}")
        metadata[key] = _read_value(r, value_type, key, array_limit)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"invalid GGUF file: general.alignment {alignment!r}")

    tensors = []
    seen = set()
    for i in range(n_tensors):
        info = _read_tensor_info(r, i)
        if info.name in seen:
            raise GGUFError(f"invalid GGUF file: duplicate tensor {info.name}")
        seen.add(info.name)
        tensors.append(info)

    data_offset = r.pos + (-r.pos % alignment)
    for t in tensors:
        if t.offset % alignment:
            raise GGUFError(f"invalid GGUF file: tensor {t.name} offset is not aligned")
        if data_offset + t.offset + t.n_bytes > size:
            raise GGUFError(
                f"truncated GGUF file: tensor {t.name} ends at byte "
                f"{data_offset + t.offset + t.n_bytes}, the file has {size}"
            )
    return GGUFHeader(path, version, metadata, tensors, data_offset, size, alignment)


def read_header(path: str | os.PathLike[str], *, array_limit: int | None = None) -> GGUFHeader:
    """Parse the header of the GGUF file at `path`.

    array_limit: leave metadata arrays longer than this (the tokenizer's tokens, merges and
    scores) unread, as GGUFArray(item_type, length): enough to list or check a model, and
    much faster. Per-layer arrays (a few hundred items at most) are still read.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            # A large buffer: metadata is many small reads (one per token string).
            with open(f.fileno(), "rb", buffering=1 << 20, closefd=False) as buffered:
                return _parse(buffered, size, array_limit, str(path))
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}") from exc
