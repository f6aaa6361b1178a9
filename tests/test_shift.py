"""`shift` (Ollama's top-level flag): a full context slides instead of ending the answer.

With shift on (the default), generation that reaches num_ctx keeps num_keep tokens, frees
half of the rest of the window and goes on, as llama.cpp's context shift does for Ollama;
the tokens after each shift equal in-process mlx-lm decoding from the shifted window.
With shift off, the answer ends at the context's end with done_reason "length", and a
prompt longer than the context is Ollama's 400.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import pytest
from ollmlx_worker.prompts import PROMPT_TOO_LONG, shift_window

from tests.conftest import Server
from tests.oracle import Oracle

NUM_CTX = 48


@pytest.fixture(scope="module")
def oracle(tiny_model_dir: Path) -> Oracle:
    return Oracle(tiny_model_dir)


def expected_with_shifts(oracle: Oracle, prompt: list[int], total: int) -> list[int]:
    """What a sliding window gives: decode until the window is full, shift, go on."""
    window, generated = list(prompt), []
    while len(generated) < total:
        room = min(NUM_CTX - len(window), total - len(generated))
        tokens = oracle.greedy(window, room).tokens
        generated += tokens
        window += tokens
        if len(tokens) < room:
            break  # EOS
        if len(window) >= NUM_CTX:
            window = shift_window(window, NUM_CTX, 4, oracle.tokenizer.bos_token_id)
    return generated


def test_a_full_context_slides_and_the_answer_goes_on(
    client: ollama.Client, oracle: Oracle
) -> None:
    prompt = oracle.chat_prompt([{"role": "user", "content": "tell me a long story"}])
    options = {"temperature": 0, "num_ctx": NUM_CTX, "num_predict": 70}
    result = client.generate(model="tiny", prompt="tell me a long story", options=options)
    expected = expected_with_shifts(oracle, prompt, 70)
    assert result.context is not None
    assert list(result.context[len(prompt) :]) == expected
    assert result.eval_count == len(expected) == 70  # far past the 48-token context
    assert result.done_reason == "length"


def test_shift_off_ends_at_the_context(server: Server, oracle: Oracle) -> None:
    prompt = oracle.chat_prompt([{"role": "user", "content": "tell me a long story"}])
    body = {
        "model": "tiny",
        "prompt": "tell me a long story",
        "stream": False,
        "shift": False,
        "options": {"temperature": 0, "num_ctx": NUM_CTX, "num_predict": 70},
    }
    reply = httpx.post(server.url + "/api/generate", json=body, timeout=60)
    assert reply.status_code == 200
    final = reply.json()
    assert final["done_reason"] == "length"
    assert final["eval_count"] == NUM_CTX - len(prompt)
    assert final["context"][len(prompt) :] == oracle.greedy(prompt, NUM_CTX - len(prompt)).tokens


def test_a_prompt_longer_than_the_context_with_shift_off_is_ollamas_400(server: Server) -> None:
    body = {
        "model": "tiny",
        "prompt": "word " * 200,
        "stream": False,
        "shift": False,
        "options": {"num_ctx": NUM_CTX},
    }
    reply = httpx.post(server.url + "/api/generate", json=body, timeout=60)
    assert reply.status_code == 400
    assert reply.json()["error"] == PROMPT_TOO_LONG


def test_a_prompt_longer_than_the_context_keeps_its_start_and_its_end(
    client: ollama.Client, oracle: Oracle
) -> None:
    text = " ".join(f"w{i}" for i in range(120))
    prompt = oracle.chat_prompt([{"role": "user", "content": text}])
    assert len(prompt) > NUM_CTX
    options = {"temperature": 0, "num_ctx": NUM_CTX, "num_predict": 2}
    result = client.generate(model="tiny", prompt=text, options=options)
    kept = shift_window(prompt, NUM_CTX, 4, oracle.tokenizer.bos_token_id)
    assert result.context is not None
    assert list(result.context[: len(kept)]) == kept
    assert result.prompt_eval_count == len(kept)
