"""ollmlx/gguf_meta.py: the struct-only GGUF header reader, against gguf-py and hostile files."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from ollmlx.gguf_meta import GGUFArray, GGUFError, read_header


def _small_gguf(path: Path) -> Path:
    """A GGUF file with scalars, arrays, a template and tensors of three kinds."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(4096)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_token_list([f"t{i}" for i in range(2000)])
    writer.add_chat_template("{{ messages }}")
    writer.add_array("llama.some_per_layer", [1, 2, 3])
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    writer.add_tensor(
        "token_embd.weight",
        gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0),
        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
    )
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.add_tensor("output.weight", w.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _small_gguf(tmp_path_factory.mktemp("meta") / "small.gguf")


def test_header_matches_gguf_py(small: Path) -> None:
    header = read_header(small)
    reader = gguf.GGUFReader(str(small))
    assert header.architecture == "llama"
    assert header.context_length == 4096
    assert header.chat_template == "{{ messages }}"
    assert header.file_type == "Q8_0"
    assert header.metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-5  # not 9.99e-06
    assert header.metadata["tokenizer.ggml.tokens"][1999] == "t1999"
    assert header.metadata["llama.some_per_layer"] == [1, 2, 3]
    assert header.tensor_types == {"Q8_0": 1, "F32": 1, "F16": 1}
    assert header.parameter_count == 64 * 64 * 2 + 64
    for ours, theirs in zip(header.tensors, reader.tensors, strict=True):
        assert ours.name == theirs.name
        assert ours.type_name == theirs.tensor_type.name
        assert list(ours.shape) == [int(d) for d in theirs.shape]
        assert header.data_offset + ours.offset == theirs.data_offset
        assert ours.n_bytes == theirs.n_bytes


def test_long_arrays_can_be_left_unread(small: Path) -> None:
    header = read_header(small, array_limit=100)
    assert header.metadata["tokenizer.ggml.tokens"] == GGUFArray(8, 2000)
    assert header.metadata["llama.some_per_layer"] == [1, 2, 3]
    assert [t.name for t in header.tensors] == [t.name for t in read_header(small).tensors]


def test_a_truncated_file_is_a_clear_error(small: Path, tmp_path: Path) -> None:
    data = small.read_bytes()
    cut = tmp_path / "cut.gguf"
    # Inside the magic, the counts, the metadata, the tensor table and the tensor data.
    for size in (2, 10, 40, 300, len(data) // 2, len(data) - 1):
        cut.write_bytes(data[:size])
        with pytest.raises(GGUFError, match=r"truncated|not a GGUF file"):
            read_header(cut)


def _header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # A metadata key whose length field claims 2^62 bytes.
        (_header(0, 1) + struct.pack("<Q", 1 << 62), "exceeds the maximum"),
        # A string value of 2^62 bytes.
        (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IQ", 8, 1 << 62), "exceeds"),
        # An array of 2^62 uint32 items.
        (
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 1 << 62),
            "exceeds",
        ),
        # 2^62 tensors and 2^62 metadata pairs.
        (_header(1 << 62, 0), "tensor count"),
        (_header(0, 1 << 62), "metadata count"),
        # A tensor whose data would lie 2^62 bytes past the end.
        (
            _header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 32, 0, 1 << 62),
            "truncated GGUF file: tensor t",
        ),
    ],
)
def test_hostile_lengths_fail_fast(tmp_path: Path, body: bytes, message: str) -> None:
    path = tmp_path / "hostile.gguf"
    path.write_bytes(body + b"\0" * 64)
    start = time.monotonic()
    with pytest.raises(GGUFError, match=message):
        read_header(path)
    assert time.monotonic() - start < 1


def test_a_non_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"{}")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_header(path)
    with pytest.raises(GGUFError, match="cannot read"):
        read_header(tmp_path / "missing.gguf")


def test_unsupported_versions_are_named(tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 1) + b"\0" * 32)
    with pytest.raises(GGUFError, match="version 1"):
        read_header(path)
    path.write_bytes(b"GGUF" + struct.pack(">I", 3) + b"\0" * 32)  # big-endian
    with pytest.raises(GGUFError, match="big-endian"):
        read_header(path)


def test_the_reader_is_a_leaf_module() -> None:
    # The supervisor imports it for /api/tags: no MLX, no numpy, nothing of ollmlx but
    # the other leaves (the one error type).
    code = (
        "import sys, ollmlx.gguf_meta, ollmlx.templates; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'numpy', 'gguf', "
        "'transformers') or (m.startswith('ollmlx.') and m not in "
        "('ollmlx.gguf_meta', 'ollmlx.templates', 'ollmlx.errors'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
