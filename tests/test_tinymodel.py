"""The tiny random model builder: loads with mlx-lm, tokenizes, chats and generates."""

from __future__ import annotations

import json
from pathlib import Path

import mlx_lm
import pytest
from mlx_lm.sample_utils import make_sampler

from tests.tinymodel import (
    ASSISTANT,
    END,
    SPECIAL_TOKENS,
    USER,
    build_tiny_model,
    count_parameters,
    main,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    return mlx_lm.load(str(model_dir))


def test_config_matches_tokenizer(model_dir: Path, loaded) -> None:
    _, tokenizer = loaded
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["vocab_size"] == len(tokenizer._tokenizer) == 512
    assert config["eos_token_id"] == tokenizer.eos_token_id == SPECIAL_TOKENS.index(END)
    assert config["bos_token_id"] == tokenizer.bos_token_id
    assert tokenizer.eos_token_ids == {config["eos_token_id"]}


def test_chat_template_renders(loaded) -> None:
    _, tokenizer = loaded
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|begin|><|system|>\nBe brief.<|end|>\n")
    assert text.endswith(f"{USER}\nAgain{END}\n{ASSISTANT}\n")
    no_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not no_prompt.endswith(f"{ASSISTANT}\n")
    # Special tokens in the rendered prompt encode as single ids.
    assert tokenizer.encode(END, add_special_tokens=False) == [SPECIAL_TOKENS.index(END)]


@pytest.mark.parametrize("text", ["héllo wörld ✓", "The cat runs.\n\tTabs 123 日本 😀", ""])
def test_encode_decode_round_trip(loaded, text: str) -> None:
    _, tokenizer = loaded
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize(
    "prompt", ["Hello there", "The quick brown fox", "<|user|>\nWhy?<|end|>\n<|assistant|>\n"]
)
def test_greedy_generation_runs_full_length(loaded, prompt: str) -> None:
    model, tokenizer = loaded
    responses = list(
        mlx_lm.stream_generate(
            model, tokenizer, prompt, max_tokens=64, sampler=make_sampler(temp=0.0)
        )
    )
    assert len(responses) == 64
    assert responses[-1].finish_reason == "length"
    assert all(r.token not in tokenizer.eos_token_ids for r in responses)
    text = "".join(r.text for r in responses)
    # Only printable text: no control tokens, no broken UTF-8.
    assert text and "\ufffd" not in text and not any(s in text for s in SPECIAL_TOKENS)


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "a", seed=7)
    b = build_tiny_model(tmp_path / "b", seed=7)
    c = build_tiny_model(tmp_path / "c", seed=8)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_cli_builds_model_of_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--params", "3000000"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert 2_000_000 < count_parameters(tmp_path) < 4_000_000
    model, tokenizer = mlx_lm.load(str(tmp_path))
    out = list(mlx_lm.stream_generate(model, tokenizer, "Hi", max_tokens=8))
    assert len(out) == 8
