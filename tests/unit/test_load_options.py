"""The load-time options of issue 16: Modelfile parsing, checks, and the memory estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollmlx.config import kv_bytes_per_element
from ollmlx.errors import StatusError
from ollmlx.options import check_option, draft_num_predict, kv_cache_type, parse_parameter
from ollmlx.store.modelfile import parse_modelfile
from ollmlx.store.modelinfo import estimate_memory, kv_bytes_per_token


def test_modelfile_draft_and_parameters() -> None:
    parsed = parse_modelfile(
        "FROM ./big\nDRAFT ./small\nPARAMETER draft_num_predict 6\nPARAMETER kv_cache_type Q4_0\n"
    )
    assert parsed.draft == "./small"
    assert parsed.parameters == {"draft_num_predict": 6, "kv_cache_type": "q4_0"}
    assert draft_num_predict(parsed.parameters) == 6
    assert kv_cache_type(parsed.parameters, "q8_0") == "q4_0"
    assert draft_num_predict({}) == 4  # Ollama's DefaultOptions
    assert kv_cache_type({}, "q8_0") == "q8_0"  # OLLAMA_KV_CACHE_TYPE


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("kv_cache_type", "q4_1", "kv_cache_type: expected one of f16, q8_0, q4_0, got 'q4_1'"),
        ("kv_cache_type", 8, 'option "kv_cache_type" must be of type string'),
        ("draft_num_predict", 0, "draft_num_predict must be between 1 and 32"),
        ("draft_num_predict", 33, "draft_num_predict must be between 1 and 32"),
    ],
)
def test_bad_values_are_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(StatusError) as err:
        check_option(key, value)
    assert err.value.status == 400 and err.value.message == message


def test_a_bad_modelfile_value_is_refused() -> None:
    with pytest.raises(StatusError, match="kv_cache_type: expected one of"):
        parse_parameter("kv_cache_type", "fp8")


def test_memory_estimate_counts_the_quantized_cache_and_the_draft(kv_model_dir: Path) -> None:
    config = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    config["hidden_size"] = 128  # heads of 64
    assert kv_bytes_per_token(config, "f16") == 2 * 2 * 64 * 2
    assert kv_bytes_per_token(config, "q8_0") == 2 * 2 * 64 * (1 + 4 / 64)
    assert kv_bytes_per_element("q4_0", 64) == 0.5 + 4 / 64
    assert kv_bytes_per_element("q4_0", 16) == 2  # heads too small to quantize: float16
    weights = 1000
    f16 = estimate_memory(kv_model_dir, weights, 4096, "f16")
    q4 = estimate_memory(kv_model_dir, weights, 4096, "q4_0")
    assert f16 - weights == 4096 * 2 * 2 * 64 * 2
    assert q4 - weights == 4096 * 2 * 2 * 64 * (0.5 + 4 / 64)
    with_draft = estimate_memory(kv_model_dir, weights, 4096, "q4_0", draft_dir=kv_model_dir)
    draft_weights = sum(p.stat().st_size for p in kv_model_dir.glob("*.safetensors"))
    assert with_draft == q4 + draft_weights + (f16 - weights)
