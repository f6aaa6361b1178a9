"""/api/generate and /api/chat through the official client, against in-process mlx-lm."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest

from tests.oracle import Oracle

GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def oracle(tiny_model_dir: Path) -> Oracle:
    return Oracle(tiny_model_dir)


def test_generate_tokens_equal_in_process_mlx_lm(client: ollama.Client, oracle: Oracle) -> None:
    result = client.generate(model="tiny", prompt="hello world", options=GREEDY)
    expected = oracle.greedy(oracle.chat_prompt([{"role": "user", "content": "hello world"}]), 24)
    assert result.context is not None
    assert list(result.context[: len(expected.prompt)]) == expected.prompt
    assert list(result.context[len(expected.prompt) :]) == expected.tokens
    assert result.response == expected.text
    assert result.eval_count == 24
    # Evaluated tokens only, as Ollama counts them: a cached prefix is not re-evaluated.
    assert result.prompt_eval_count is not None
    assert 0 < result.prompt_eval_count <= len(expected.prompt)
    assert result.done_reason == "length"


def test_chat_text_equals_in_process_mlx_lm(client: ollama.Client, oracle: Oracle) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a river."},
        {"role": "assistant", "content": "The quick river."},
        {"role": "user", "content": "Another one?"},
    ]
    result = client.chat(model="tiny", messages=messages, options=GREEDY)
    expected = oracle.greedy(oracle.chat_prompt(messages), 24)
    assert result.message.role == "assistant"
    assert result.message.content == expected.text
    assert result.eval_count == len(expected.tokens) == 24
    assert result.prompt_eval_count is not None
    assert 0 < result.prompt_eval_count <= len(expected.prompt)


def test_streamed_chat_equals_non_streamed(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "tell me a story"}]
    whole = client.chat(model="tiny", messages=messages, options=GREEDY)
    parts = list(client.chat(model="tiny", messages=messages, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].done_reason == "length"
    assert all(not p.done for p in parts[:-1])


def test_generate_context_continues_a_conversation(client: ollama.Client, oracle: Oracle) -> None:
    first = client.generate(model="tiny", prompt="first turn", options=GREEDY)
    second = client.generate(
        model="tiny", prompt="second turn", context=first.context, options=GREEDY
    )
    prompt = list(first.context or []) + oracle.chat_prompt(
        [{"role": "user", "content": "second turn"}]
    )
    expected = oracle.greedy(prompt, 24)
    assert second.context is not None
    assert list(second.context) == expected.prompt + expected.tokens


def test_streaming_sends_one_chunk_per_token(client: ollama.Client) -> None:
    chunks = list(
        client.generate(
            model="tiny",
            prompt="stream",
            options={"temperature": 0, "num_predict": 50},
            stream=True,
        )
    )
    tokens = [c for c in chunks if not c.done]
    assert len(tokens) >= 50
    assert chunks[-1].done and chunks[-1].eval_count == 50


def test_num_predict_limits_tokens(client: ollama.Client) -> None:
    result = client.generate(model="tiny", prompt="x", options={"num_predict": 5})
    assert result.eval_count == 5
    assert result.done_reason == "length"


def test_stop_string_spanning_two_tokens_is_cut_and_not_leaked(
    client: ollama.Client, oracle: Oracle
) -> None:
    expected = oracle.greedy(oracle.chat_prompt([{"role": "user", "content": "stop test"}]), 40)
    pieces = [oracle.tokenizer.decode([t]) for t in expected.tokens]
    # A stop string made of the end of one token's text and the start of the next one's.
    index = next(
        i for i in range(3, len(pieces) - 1) if pieces[i].strip() and pieces[i + 1].strip()
    )
    stop = pieces[index][-1] + pieces[index + 1][:2]
    full = client.generate(
        model="tiny", prompt="stop test", options={"temperature": 0, "num_predict": 40}
    )
    assert stop in full.response
    cut = full.response[: full.response.index(stop)]
    options = {"temperature": 0, "num_predict": 40, "stop": [stop]}
    result = client.generate(model="tiny", prompt="stop test", options=options)
    assert result.response == cut
    assert result.done_reason == "stop"
    streamed = "".join(
        c.response
        for c in client.generate(model="tiny", prompt="stop test", options=options, stream=True)
    )
    assert streamed == cut
    assert stop not in streamed


def test_seed_gives_the_same_output(client: ollama.Client) -> None:
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_predict": 20, "seed": 42}
    first = client.generate(model="tiny", prompt="random", options=options)
    second = client.generate(model="tiny", prompt="random", options=options)
    other = client.generate(model="tiny", prompt="random", options={**options, "seed": 43})
    assert first.response == second.response
    assert first.context == second.context
    assert other.context != first.context


def test_empty_prompt_loads_the_model(client: ollama.Client) -> None:
    result = client.generate(model="tiny", prompt="")
    assert result.done and result.done_reason == "load"
    assert result.response == ""
    assert "tiny:latest" in [m.model for m in client.ps().models]
    chat = client.chat(model="tiny", messages=[])
    assert chat.done_reason == "load" and chat.message.content == ""


def test_model_system_prompt_is_applied(client: ollama.Client, oracle: Oracle) -> None:
    client.create(model="tiny-system", from_="tiny", system="Always answer in rhyme.")
    result = client.generate(model="tiny-system", prompt="hi", options=GREEDY)
    expected_prompt = oracle.chat_prompt(
        [
            {"role": "system", "content": "Always answer in rhyme."},
            {"role": "user", "content": "hi"},
        ]
    )
    assert result.context is not None
    assert list(result.context[: len(expected_prompt)]) == expected_prompt


def test_stored_parameters_are_defaults_overridden_by_request(client: ollama.Client) -> None:
    client.create(model="tiny-short", from_="tiny", parameters={"num_predict": 3})
    assert client.generate(model="tiny-short", prompt="a").eval_count == 3
    result = client.generate(model="tiny-short", prompt="a", options={"num_predict": 6})
    assert result.eval_count == 6


def test_raw_prompt_skips_the_template(client: ollama.Client, oracle: Oracle) -> None:
    result = client.generate(model="tiny", prompt="plain text", raw=True, options=GREEDY)
    prompt = list(oracle.tokenizer.encode("plain text", add_special_tokens=True))
    expected = oracle.greedy(prompt, 24)
    assert result.response == expected.text
    assert result.context is None  # raw responses carry no context


def test_long_prompt_is_truncated_from_the_front(client: ollama.Client) -> None:
    long_prompt = "word " * 400
    result = client.generate(
        model="tiny", prompt=long_prompt, options={"num_ctx": 64, "num_predict": 4}
    )
    assert result.prompt_eval_count is not None and result.prompt_eval_count < 64
    assert result.eval_count == 4


def test_final_chunk_carries_timings_in_nanoseconds(client: ollama.Client) -> None:
    result = client.generate(model="tiny", prompt="timing", options={"num_predict": 8})
    assert result.total_duration and result.total_duration > 0
    assert result.eval_duration and result.eval_duration > 0
    assert result.prompt_eval_duration and result.prompt_eval_duration > 0
    assert result.total_duration >= result.eval_duration + result.prompt_eval_duration
    assert result.created_at and result.created_at.endswith("Z")
