"""The OpenAI-compatible API (/v1/...) through the official `openai` client and raw SSE."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.conftest import Server
from tests.oracle import Oracle
from tests.scriptedmodel import build_scripted_model
from tests.test_structured import PERSON, SCHEMAS
from tests.test_tools_thinking import WEATHER_TOOL

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
THINKING = "The user wants the weather."
STORY = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture(scope="module")
def oracle(tiny_model_dir: Path) -> Oracle:
    return Oracle(tiny_model_dir)


@pytest.fixture
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="ollmlx", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def agent(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The scripted model: thinks, says "Let me check." and calls get_weather(Paris)."""
    model_dir = build_scripted_model(tmp_path_factory.mktemp("scripted") / "agent")
    with server.client() as client:
        client.create(model="oai-agent", from_=str(model_dir))
    return "oai-agent"


def sse(server: Server, path: str, body: dict[str, Any]) -> list[str]:
    """The raw lines of an SSE answer (blank separators dropped)."""
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        return [line for line in response.iter_lines() if line]


def data_chunks(lines: list[str]) -> list[dict[str, Any]]:
    """`data: {...}` lines, checking that the stream ends with `data: [DONE]`."""
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


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


def test_bad_reasoning_values_are_400(oai: openai.OpenAI, agent: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=agent, messages=ASK, reasoning_effort="high")
    assert err.value.body == {
        "message": 'think value "high" is not supported for this model',
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=agent, messages=ASK, extra_body={"reasoning_effort": "x"})
    body: Any = err.value.body
    assert body["message"] == (
        'invalid reasoning value: \'x\' (must be "high", "medium", "low", or "none")'
    )


# --- completions -------------------------------------------------------------------


def test_completions_equal_native_generate(oai: openai.OpenAI, client: ollama.Client) -> None:
    result = oai.completions.create(
        model="tiny", prompt="hello world", temperature=0, max_tokens=16
    )
    native = client.generate(
        model="tiny", prompt="hello world", options={"temperature": 0, "num_predict": 16}
    )
    assert re.fullmatch(r"cmpl-\d+", result.id)
    assert result.object == "text_completion"
    assert result.model == "tiny"
    assert len(result.choices) == 1
    assert result.choices[0].text == native.response
    assert result.choices[0].index == 0
    assert result.choices[0].finish_reason == "length"
    assert result.choices[0].logprobs is None
    assert result.usage is not None and result.usage.completion_tokens == 16


def test_streamed_completions_end_with_usage_and_done(server: Server, oai: openai.OpenAI) -> None:
    whole = oai.completions.create(model="tiny", prompt="hello world", temperature=0, max_tokens=16)
    body = {
        "model": "tiny",
        "prompt": "hello world",
        "temperature": 0,
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    *tokens, final, usage = data_chunks(sse(server, "/v1/completions", body))
    assert "".join(c["choices"][0]["text"] for c in tokens) == whole.choices[0].text
    assert all(c["object"] == "text_completion" for c in tokens)
    assert final["choices"] == [
        {"text": "", "index": 0, "finish_reason": "length", "logprobs": None}
    ]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 16


def test_completions_logprobs_in_the_legacy_shape(oai: openai.OpenAI) -> None:
    result = oai.completions.create(
        model="tiny", prompt="hello", temperature=0, max_tokens=4, logprobs=2
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert "".join(logprobs.tokens) == result.choices[0].text
    assert logprobs.text_offset == [
        sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))
    ]
    assert logprobs.top_logprobs is not None and logprobs.token_logprobs is not None
    for token, value, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert len(top) == 2 and top[token] == value  # greedy: the chosen one is the best


def test_completions_suffix_is_400_like_ollama(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="tiny", prompt="def f(", suffix="return 1")
    body: Any = err.value.body
    assert body["message"] == "tiny:latest does not support insert"


# --- models ------------------------------------------------------------------------


def test_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    listed = {m.id: m for m in oai.models.list()}
    card = listed["tiny:latest"]
    assert card.object == "model" and card.owned_by == "library"
    assert isinstance(card.created, int) and card.created > 0
    retrieved = oai.models.retrieve("tiny")
    assert (retrieved.id, retrieved.object, retrieved.owned_by) == ("tiny", "model", "library")
    assert retrieved.created == card.created


def test_unknown_model_retrieve_is_404_in_openai_shape(server: Server) -> None:
    response = httpx.get(server.url + "/v1/models/nope")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "model 'nope' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }


# --- responses ---------------------------------------------------------------------


def test_responses_text_equals_chat_with_instructions(oai: openai.OpenAI, oracle: Oracle) -> None:
    response = oai.responses.create(
        model="tiny",
        input="Name a river.",
        instructions="You are terse.",
        max_output_tokens=12,
        temperature=0,
    )
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a river."},
    ]
    expected = oracle.greedy(oracle.chat_prompt(messages), 12)
    assert re.fullmatch(r"resp_\d+", response.id)
    assert response.object == "response"
    assert response.model == "tiny"
    assert response.instructions == "You are terse."
    assert response.output_text == expected.text
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    # The token limit ends it early: OpenAI's "incomplete".
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 12
    assert response.usage.total_tokens == response.usage.input_tokens + 12


def test_streamed_responses_send_the_event_sequence(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(model="tiny", input="hello", max_output_tokens=8, temperature=0)
    events = list(
        oai.responses.create(
            model="tiny", input="hello", max_output_tokens=8, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == whole.output_text
    done = events[-1]
    assert done.type == "response.incomplete"
    assert done.response.output_text == whole.output_text
    assert done.response.usage is not None and done.response.usage.output_tokens == 8


def test_responses_text_format_json_schema_validates(oai: openai.OpenAI) -> None:
    text: Any = {"format": {"type": "json_schema", "name": "person", "schema": PERSON}}
    for seed, stream in ((0, False), (1, True)):
        kwargs: Any = {"temperature": 0.9, "max_output_tokens": 400, "text": text}
        request = {"model": "tiny", "input": f"a person {seed}", **kwargs}
        if stream:
            events = list(oai.responses.create(**request, stream=True))
            response = events[-1].response
            deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
            assert "".join(deltas) == response.output_text
        else:
            response = oai.responses.create(**request)
        assert response.status == "completed"
        assert response.text.format.type == "json_schema"
        jsonschema.validate(json.loads(response.output_text), PERSON)


def test_responses_message_list_input(oai: openai.OpenAI, oracle: Oracle) -> None:
    messages: Any = [
        {"role": "user", "content": "Name a river."},
        {"role": "assistant", "content": "The quick river."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "More?"}]},
    ]
    response = oai.responses.create(
        model="tiny", input=messages, max_output_tokens=10, temperature=0
    )
    expected = oracle.greedy(
        oracle.chat_prompt(
            [
                {"role": "user", "content": "Name a river."},
                {"role": "assistant", "content": "The quick river."},
                {"role": "user", "content": "More?"},
            ]
        ),
        10,
    )
    assert response.output_text == expected.text


def test_responses_reasoning_and_function_calls(oai: openai.OpenAI, agent: str) -> None:
    tool: Any = {"type": "function", **WEATHER_TOOL["function"]}
    response = oai.responses.create(model=agent, input=ASK[0]["content"], tools=[tool])
    assert response.status == "completed"
    reasoning, message, call = response.output
    assert reasoning.type == "reasoning"
    assert [s.text for s in reasoning.summary] == [THINKING]
    assert message.type == "message" and response.output_text == "Let me check."
    assert call.type == "function_call" and call.status == "completed"
    assert call.name == "get_weather" and call.arguments == '{"city":"Paris"}'
    assert call.call_id.startswith("call_")
    events = list(
        oai.responses.create(model=agent, input=ASK[0]["content"], tools=[tool], stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.reasoning_summary_text.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert kinds[-1] == "response.completed"
    assert [i.type for i in events[-1].response.output] == ["reasoning", "message", "function_call"]
    followup: Any = [
        {"role": "user", "content": ASK[0]["content"]},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'},
    ]
    again = oai.responses.create(model=agent, input=followup, tools=[tool])
    assert again.status == "completed"


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
