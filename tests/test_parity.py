"""Where ollmlx must answer as Ollama does: default options, the default context and its
cap, truncate, and the Go formats the CLI prints. Real servers and the official client."""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import psutil
import pytest

from ollmlx.cli.gofmt import go_duration, go_float32, go_float32_list
from ollmlx.config import (
    GIB,
    default_context_length,
    detect_backend,
    gpu_memory,
    load_settings,
)
from ollmlx.options import DEFAULT_OPTIONS
from tests.conftest import Server, start_server
from tests.oracle import Oracle
from tests.tinymodel import build_tiny_model

STORY = [{"role": "user", "content": "tell me a story"}]


def running_context(client: ollama.Client, model: str) -> int:
    running = {m.model: m for m in client.ps().models}
    return int(running[f"{model}:latest"].context_length or 0)


def test_only_temperature_zero_gives_in_process_mlx_lms_greedy_tokens(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # No option but temperature: Ollama's DefaultOptions apply, repeat_penalty 1.0 among
    # them, so the answer is plain greedy decoding. OLLAMA_CONTEXT_LENGTH bounds it (with
    # `shift` off; on, the window would slide on for up to 10 contexts, as in Ollama).
    server = start_server(tmp_path, OLLAMA_CONTEXT_LENGTH="96")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            body = {
                "model": "tiny",
                "prompt": "hello world",
                "options": {"temperature": 0},
                "shift": False,
                "stream": False,
            }
            reply = httpx.post(server.url + "/api/generate", json=body, timeout=120)
            result = ollama.GenerateResponse(**reply.json())
            assert running_context(client, "tiny") == 96
    finally:
        server.stop()
    oracle = Oracle(tiny_model_dir)
    prompt = oracle.chat_prompt([{"role": "user", "content": "hello world"}])
    expected = oracle.greedy(prompt, 96 - len(prompt))
    assert result.context is not None
    assert list(result.context) == [*prompt, *expected.tokens]
    assert result.response == expected.text
    assert result.eval_count == len(expected.tokens)


def test_default_options_are_ollamas() -> None:
    # api/types.go DefaultOptions(): repeat_penalty 1.0 (old docs pages said 1.1).
    assert DEFAULT_OPTIONS == {
        "num_predict": -1,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.0,
        "repeat_last_n": 64,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": None,
        "num_keep": 4,
    }


def test_default_context_is_picked_by_memory_and_capped_at_training(
    client: ollama.Client, tmp_path: Path, tiny_model_dir: Path
) -> None:
    long_dir = build_tiny_model(tmp_path / "long", max_position_embeddings=8192)
    client.create(model="tiny-8k", from_=str(long_dir))
    client.generate(model="tiny-8k", prompt="hi", options={"num_predict": 1})
    backend = detect_backend()
    by_memory = default_context_length(gpu_memory(backend, psutil.virtual_memory().total))
    assert load_settings({}).default_num_ctx == by_memory
    assert running_context(client, "tiny-8k") == min(by_memory, 8192)
    if backend == "cpu":
        assert by_memory == 4096  # no GPU memory: Ollama's smallest tier
    # The tiny model was trained for 2048 tokens: the default is capped there.
    client.generate(model="tiny", prompt="hi", options={"num_predict": 1})
    assert running_context(client, "tiny") == 2048
    client.delete("tiny-8k")


def test_a_larger_num_ctx_is_capped_at_the_trained_context_with_a_log_line(
    server: Server, client: ollama.Client
) -> None:
    result = client.chat(
        model="tiny", messages=STORY, options={"num_ctx": 100000, "num_predict": 2}
    )
    assert result.done
    assert running_context(client, "tiny") == 2048
    # llm/server.go's warning.
    assert "requested context size too large for model num_ctx=100000 n_ctx_train=2048" in (
        server.log()
    )
    client.chat(model="tiny", messages=STORY, options={"num_ctx": 512, "num_predict": 1})
    assert running_context(client, "tiny") == 512  # the context in use, as asked


def test_a_models_num_ctx_parameter_is_its_default(client: ollama.Client) -> None:
    client.create(model="tiny-ctx", from_="tiny", parameters={"num_ctx": 300})
    client.generate(model="tiny-ctx", prompt="", keep_alive="1m")
    assert running_context(client, "tiny-ctx") == 300
    client.delete("tiny-ctx")


def test_truncate_false_refuses_a_chat_longer_than_the_context(client: ollama.Client) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "word " * 300}],
        "options": {"num_ctx": 32},
        "truncate": False,
        "stream": False,
    }
    with pytest.raises(ollama.ResponseError) as err:
        # The client has no truncate argument for chat: its request function with the body.
        client._request(ollama.ChatResponse, "POST", "/api/chat", json=body)
    assert err.value.status_code == 400
    assert err.value.error == "the input length exceeds the context length"
    # truncate: true (the default) drops what does not fit instead.
    kept = client._request(
        ollama.ChatResponse, "POST", "/api/chat", json={**body, "truncate": True}
    )
    assert kept.done


# --- pure functions with Ollama's own tables ------------------------------------------


def test_default_context_tiers_are_ollamas() -> None:
    # server/routes.go: 47 GiB and up 262144, 23 GiB and up 32768, else 4096.
    assert default_context_length(0) == 4096
    assert default_context_length(23 * GIB - 1) == 4096
    assert default_context_length(23 * GIB) == 32768
    assert default_context_length(47 * GIB - 1) == 32768
    assert default_context_length(47 * GIB) == 262144
    assert gpu_memory("cpu", 64 * GIB) == 0
    assert gpu_memory("metal", 32 * GIB) < 23 * GIB < gpu_memory("metal", 48 * GIB)


def test_settings_take_ollama_context_length_and_no_cloud() -> None:
    assert load_settings({"OLLAMA_CONTEXT_LENGTH": "8192"}).context_length == 8192
    assert load_settings({}).context_length == 0  # 0: by memory
    assert load_settings({"OLLAMA_NO_CLOUD": "1"}).no_cloud
    assert load_settings({"OLLAMA_NO_CLOUD": "yes"}).no_cloud  # Go: unparsable is true
    assert not load_settings({"OLLAMA_NO_CLOUD": "false"}).no_cloud


@pytest.mark.parametrize(
    ("ns", "text"),
    [  # Go's time package tests (format_test.go durationTests) and Ollama-like timings
        (0, "0s"),
        (1, "1ns"),
        (1100, "1.1µs"),
        (2_200_000, "2.2ms"),
        (3_300_000_000, "3.3s"),
        (4 * 60 * 10**9 + 5 * 10**9, "4m5s"),
        (4 * 60 * 10**9 + 5_001_000_000, "4m5.001s"),
        (5 * 3600 * 10**9 + 6 * 60 * 10**9 + 7_001_000_000, "5h6m7.001s"),
        (8 * 60 * 10**9 + 1, "8m0.000000001s"),
        (2**63 - 1, "2562047h47m16.854775807s"),
        (-(2**63), "-2562047h47m16.854775808s"),
        (60_921_234, "60.921234ms"),
        (3600 * 10**9, "1h0m0s"),
    ],
)
def test_durations_are_go_durations(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_float32s_are_written_as_go_json_writes_them() -> None:
    assert go_float32(0.1) == "0.1"
    assert go_float32(-0.25) == "-0.25"
    assert go_float32(0.123456789) == "0.12345679"  # float32's shortest digits
    assert go_float32(123456789.0) == "123456790"
    assert go_float32(1e-7) == "1e-7"  # 'e' below 1e-6, "e-07" cleaned to "e-7"
    assert go_float32(1e-6) == "0.000001"
    assert go_float32(1e21) == "1e+21"
    assert go_float32(0.0) == "0"
    assert go_float32_list([0.5, -1.0, 2.5e-8]) == "[0.5,-1,2.5e-8]"
