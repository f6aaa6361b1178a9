"""The other OpenAI-compatible routes: /v1/completions, /v1/models and /v1/responses."""

from __future__ import annotations

import json
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
    THINKING,
    agent,
    data_chunks,
    oai,
    oracle,
    sse,
)
from tests.oracle import Oracle
from tests.test_structured import PERSON
from tests.test_tools_thinking import WEATHER_TOOL

__all__ = ["agent", "oai", "oracle"]


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
