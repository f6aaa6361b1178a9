"""The OpenAI-compatible chat API (/v1/chat/completions): the `openai` client and raw SSE."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.conftest import Server
from tests.openai_helpers import (  # fixtures are found by name in the test module
    ASK,
    STORY,
    THINKING,
    agent,
    data_chunks,
    oai,
    oracle,
    sse,
)
from tests.oracle import Oracle
from tests.test_structured import SCHEMAS
from tests.test_tools_thinking import WEATHER_TOOL

__all__ = ["agent", "oai", "oracle"]


# --- chat completions ---------------------------------------------------------------


def test_chat_greedy_text_equals_native_chat_and_mlx_lm(
    oai: openai.OpenAI, client: ollama.Client, oracle: Oracle
) -> None:
    result = oai.chat.completions.create(model="tiny", messages=STORY, temperature=0, max_tokens=24)
    native = client.chat(
        model="tiny", messages=STORY, options={"temperature": 0, "num_predict": 24}
    )
    expected = oracle.greedy(oracle.chat_prompt(STORY), 24)
    assert re.fullmatch(r"chatcmpl-\d+", result.id)
    assert result.object == "chat.completion"
    assert result.model == "tiny"
    assert result.system_fingerprint == "fp_ollama"
    assert len(result.choices) == 1
    choice = result.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == native.message.content == expected.text
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "length"
    assert choice.logprobs is None
    usage = result.usage
    assert usage is not None
    assert usage.completion_tokens == 24
    assert 0 < usage.prompt_tokens <= len(expected.prompt)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_chat_sends_role_chunks_finish_usage_and_done(
    server: Server, oai: openai.OpenAI
) -> None:
    whole = oai.chat.completions.create(model="tiny", messages=STORY, temperature=0, max_tokens=24)
    body = {
        "model": "tiny",
        "messages": STORY,
        "temperature": 0,
        "max_tokens": 24,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = data_chunks(sse(server, "/v1/chat/completions", body))
    *tokens, final, usage = chunks
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens)
    text = "".join(c["choices"][0]["delta"]["content"] for c in tokens)
    assert text == whole.choices[0].message.content
    assert final["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": "length",
            "logprobs": None,
        }
    ]
    assert "usage" not in final
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 24
    assert usage["usage"]["total_tokens"] == (
        usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]
    )


def test_streamed_chat_through_the_client_equals_non_streamed(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model="tiny", messages=STORY, temperature=0, max_tokens=24)
    stream = oai.chat.completions.create(
        model="tiny", messages=STORY, temperature=0, max_tokens=24, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_stop_strings_end_the_answer_before_them(oai: openai.OpenAI) -> None:
    free = oai.chat.completions.create(model="tiny", messages=STORY, temperature=0, max_tokens=24)
    text = free.choices[0].message.content or ""
    stop = text[10:13]
    for value in (stop, ["no-such-stop", stop]):
        result = oai.chat.completions.create(
            model="tiny", messages=STORY, temperature=0, max_tokens=24, stop=value
        )
        assert result.choices[0].message.content == text[: text.index(stop)]
        assert result.choices[0].finish_reason == "stop"


def test_max_completion_tokens_limits_the_answer(oai: openai.OpenAI) -> None:
    result = oai.chat.completions.create(
        model="tiny", messages=STORY, temperature=0, max_completion_tokens=3
    )
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 3


def test_seed_makes_sampling_repeatable(oai: openai.OpenAI) -> None:
    def sample(seed: int) -> str | None:
        result = oai.chat.completions.create(
            model="tiny", messages=STORY, temperature=1.5, seed=seed, max_tokens=12
        )
        return result.choices[0].message.content

    assert sample(3) == sample(3)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_chat_logprobs_in_openai_shape_match_mlx_lm(oai: openai.OpenAI, oracle: Oracle) -> None:
    messages = [{"role": "user", "content": "logprob check"}]
    result = oai.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    expected = oracle.greedy_logprobs(oracle.chat_prompt(messages), 5)
    assert len(logprobs.content) == 5
    for entry, (token, value, top) in zip(logprobs.content, expected, strict=True):
        assert entry.token == oracle.tokenizer.decode([token])
        assert math.isclose(entry.logprob, value, abs_tol=1e-4)
        assert entry.bytes == list(entry.token.encode())
        assert [t.token for t in entry.top_logprobs] == [oracle.tokenizer.decode([t]) for t in top]
        assert entry.top_logprobs[0].logprob == entry.logprob
    assert "".join(e.token for e in logprobs.content) == result.choices[0].message.content


def test_streamed_chat_logprobs_come_with_each_token(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="tiny", messages=STORY, max_tokens=4, logprobs=True, stream=True
        )
    )
    entries = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 4
    assert all(e.logprob <= 0 and e.top_logprobs == [] for e in entries)


# --- structured outputs ------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_responses_validate(oai: openai.OpenAI, schema: dict[str, Any]) -> None:
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    for seed in range(2):
        messages = [{"role": "user", "content": f"describe {seed}"}]
        result = oai.chat.completions.create(
            model="tiny",
            messages=messages,
            response_format=response_format,
            temperature=1.0,
            seed=seed,
            max_tokens=400,
        )
        jsonschema.validate(json.loads(result.choices[0].message.content or ""), schema)
        assert result.choices[0].finish_reason == "stop"
        chunks = list(
            oai.chat.completions.create(
                model="tiny",
                messages=messages,
                response_format=response_format,
                temperature=0.9,
                seed=seed,
                max_tokens=400,
                stream=True,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        jsonschema.validate(json.loads(text), schema)
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_object_gives_an_object(oai: openai.OpenAI) -> None:
    # Greedy: a sampled answer from a random model may still be open at max_tokens.
    result = oai.chat.completions.create(
        model="tiny",
        messages=STORY,
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    assert result.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(result.choices[0].message.content or ""), dict)


def test_invalid_json_schema_is_400(oai: openai.OpenAI) -> None:
    bad: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=STORY, response_format=bad)
    assert err.value.status_code == 400
    body: Any = err.value.body
    assert body["message"].startswith("invalid JSON schema in format:")
    assert body["type"] == "invalid_request_error"


# --- tools and reasoning -----------------------------------------------------------


def test_tool_calls_come_back_with_json_string_arguments(oai: openai.OpenAI, agent: str) -> None:
    result = oai.chat.completions.create(model=agent, messages=ASK, tools=[WEATHER_TOOL])
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call.id)
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris"}'


def test_streamed_tool_calls_end_with_finish_reason_tool_calls(server: Server, agent: str) -> None:
    body = {"model": agent, "messages": ASK, "tools": [WEATHER_TOOL], "stream": True}
    chunks = data_chunks(sse(server, "/v1/chat/completions", body))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert len(calls) == 1
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function"
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert "".join(d.get("content", "") for d in deltas) == "Let me check."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_results_are_accepted_back_by_call_id(oai: openai.OpenAI, agent: str) -> None:
    first = oai.chat.completions.create(model=agent, messages=ASK, tools=[WEATHER_TOOL])
    call = (first.choices[0].message.tool_calls or [])[0]
    history: Any = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    again = oai.chat.completions.create(model=agent, messages=history, tools=[WEATHER_TOOL])
    assert again.choices[0].message.role == "assistant"
    assert again.choices[0].finish_reason in ("stop", "tool_calls")


def test_reasoning_is_returned_as_reasoning_and_reasoning_content(
    oai: openai.OpenAI, server: Server, agent: str
) -> None:
    message = oai.chat.completions.create(model=agent, messages=ASK).choices[0].message
    assert message.model_extra == {"reasoning": THINKING, "reasoning_content": THINKING}
    body = {"model": agent, "messages": ASK, "stream": True}
    deltas = [
        c["choices"][0]["delta"] for c in data_chunks(sse(server, "/v1/chat/completions", body))
    ]
    assert "".join(d.get("reasoning", "") for d in deltas) == THINKING
    assert "".join(d.get("reasoning_content", "") for d in deltas) == THINKING


def test_reasoning_effort_none_turns_thinking_off(oai: openai.OpenAI, agent: str) -> None:
    result = oai.chat.completions.create(
        model=agent, messages=ASK, tools=[WEATHER_TOOL], reasoning_effort="none"
    )
    message = result.choices[0].message
    assert not message.model_extra
    assert message.content == "Let me check."
    # The `reasoning` object says the same.
    again = oai.chat.completions.create(
        model=agent, messages=ASK, extra_body={"reasoning": {"effort": "none"}}
    )
    assert not again.choices[0].message.model_extra


def test_reasoning_efforts_are_clamped_to_ollamas_levels(oai: openai.OpenAI, agent: str) -> None:
    # openai/openai.go thinkFromReasoningEffort: minimal -> low, xhigh/ultra -> max.
    for effort in ("minimal", "low", "medium", "high", "max", "xhigh", "ultra"):
        result = oai.chat.completions.create(
            model=agent, messages=ASK, extra_body={"reasoning_effort": effort}
        )
        assert result.choices[0].message.model_extra == {
            "reasoning": THINKING,
            "reasoning_content": THINKING,
        }, effort


def test_bad_reasoning_values_are_400(oai: openai.OpenAI, agent: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=agent, messages=ASK, extra_body={"reasoning_effort": "x"})
    body: Any = err.value.body
    assert body == {
        "message": 'invalid reasoning value: "x" (must be "minimal", "low", "medium", "high", '
        '"xhigh", "ultra", "max", or "none")',
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=ASK, reasoning_effort="high")
    assert err.value.body["message"] == '"tiny" does not support thinking'  # type: ignore[index]


# --- errors ------------------------------------------------------------------------


def test_unknown_model_is_404_in_openai_shape(oai: openai.OpenAI) -> None:
    expected = {
        "message": 'model "nope" not found, try pulling it first',
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="nope", messages=STORY)
    assert err.value.status_code == 404 and err.value.body == expected
    with pytest.raises(openai.NotFoundError) as err:
        oai.completions.create(model="nope", prompt="hi")
    assert err.value.body == expected
    with pytest.raises(openai.NotFoundError) as err:
        oai.responses.create(model="nope", input="hi")
    assert err.value.body == expected


def test_bad_requests_are_400_in_openai_shape(server: Server, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=[])
    assert err.value.body == {
        "message": "[] is too short - 'messages'",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": STORY, "temperature": "hot"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "temperature" in error["message"]
    response = httpx.post(server.url + "/v1/completions", content=b'{"model": ')
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_images_on_a_text_only_model_are_400(oai: openai.OpenAI) -> None:
    png = "data:image/png;base64,iVBORw0KGgo="
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": png}},
    ]
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}])
    body: Any = err.value.body
    assert body["message"] == '"tiny" does not support images'
    content[1]["image_url"]["url"] = "https://example.com/cat.png"
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}])
    body = err.value.body
    assert body["message"] == (
        "image URLs are not currently supported, please use base64 encoded data instead"
    )


def test_text_content_parts_are_one_message(oai: openai.OpenAI, oracle: Oracle) -> None:
    content: Any = [{"type": "text", "text": "tell me"}, {"type": "text", "text": "a story"}]
    result = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=8
    )
    expected = oracle.greedy(
        oracle.chat_prompt([{"role": "user", "content": "tell me\na story"}]), 8
    )
    assert result.choices[0].message.content == expected.text
