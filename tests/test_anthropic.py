"""Anthropic's Messages API (/v1/messages, count_tokens): the official `anthropic` SDK and
raw SSE, against /api/chat and in-process mlx-lm."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.conftest import Server, require, start_server, wait_for
from tests.oracle import Oracle
from tests.scriptedmodel import build_scripted_model

anthropic = require("anthropic", "the anthropic SDK is not installed (make install)")

STORY = [{"role": "user", "content": "tell me a story"}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
THINKING = "The user wants the weather."
GREEDY = {"temperature": 0}  # the SDK 2.x has no temperature argument: sent in the body
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
# The same tool as /api/chat takes it.
NATIVE_WEATHER = {
    "type": "function",
    "function": {
        "name": WEATHER["name"],
        "description": WEATHER["description"],
        "parameters": WEATHER["input_schema"],
    },
}


@pytest.fixture(scope="module")
def oracle(tiny_model_dir: Path) -> Oracle:
    return Oracle(tiny_model_dir)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    """A server without a prompt cache: every answer reports its whole prompt's count, so
    token counts compare across dialects whatever ran before. Its small memory budget
    holds the tiny models at their context, not at the unbounded one count_tokens uses."""
    srv = start_server(
        tmp_path_factory.mktemp("anthropic"),
        OLLMLX_PROMPT_CACHE="0",
        OLLAMA_KEEP_ALIVE="10m",
        OLLMLX_MEMORY_BUDGET="64M",
    )
    with srv.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
        agent_dir = build_scripted_model(tmp_path_factory.mktemp("scripted") / "agent")
        client.create(model="agent", from_=str(agent_dir))
    yield srv
    srv.stop()


@pytest.fixture
def claude(plain: Server) -> Iterator[Any]:
    with anthropic.Anthropic(base_url=plain.url, api_key="ollmlx", max_retries=0) as c:
        yield c


@pytest.fixture
def native(plain: Server) -> Iterator[ollama.Client]:
    with plain.client() as c:
        yield c


def sse_events(server: Server, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a raw streamed answer, checking the SSE framing."""
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        text = response.read().decode()
    events = []
    for frame in text.strip("\n").split("\n\n"):
        name_line, data_line = frame.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


def check_blocks(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Blocks open and close in index order, one at a time; returns the started blocks."""
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    started: list[dict[str, Any]] = []
    open_index = None
    for name, data in events[2:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(started)
            open_index = data["index"]
            started.append(data["content_block"])
        elif name == "content_block_delta":
            assert data["index"] == open_index
        else:
            assert name == "content_block_stop" and data["index"] == open_index
            open_index = None
    assert open_index is None
    return started


# --- plain messages -------------------------------------------------------------------


def test_message_equals_native_chat_and_mlx_lm(
    claude: Any, native: ollama.Client, oracle: Oracle
) -> None:
    message = claude.messages.create(model="tiny", max_tokens=24, messages=STORY, extra_body=GREEDY)
    chat = native.chat(model="tiny", messages=STORY, options={"temperature": 0, "num_predict": 24})
    expected = oracle.greedy(oracle.chat_prompt(STORY), 24)
    assert re.fullmatch(r"msg_[0-9a-f]{24}", message.id)
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "tiny"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == chat.message.content == expected.text
    assert message.stop_reason == "max_tokens"
    assert message.stop_sequence is None
    assert message.usage.output_tokens == chat.eval_count == 24
    assert message.usage.input_tokens == chat.prompt_eval_count == len(expected.prompt)


def test_streamed_message_sends_anthropics_events_in_order(plain: Server, claude: Any) -> None:
    whole = claude.messages.create(model="tiny", max_tokens=16, messages=STORY, extra_body=GREEDY)
    body = {"model": "tiny", "max_tokens": 16, "messages": STORY, "stream": True, **GREEDY}
    events = sse_events(plain, body)
    assert check_blocks(events) == [{"type": "text", "text": ""}]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == []
    assert start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    deltas = [d["delta"] for name, d in events if name == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    assert "".join(d["text"] for d in deltas) == whole.content[0].text
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"] == {
        "input_tokens": whole.usage.input_tokens,
        "output_tokens": whole.usage.output_tokens,
    }


def test_streamed_message_through_the_sdk_equals_non_streamed(claude: Any) -> None:
    whole = claude.messages.create(model="tiny", max_tokens=16, messages=STORY, extra_body=GREEDY)
    with claude.messages.stream(
        model="tiny", max_tokens=16, messages=STORY, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert final.content[0].text == text
    assert final.stop_reason == "max_tokens"
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == 16


def test_system_string_and_text_blocks_are_the_system_message(
    claude: Any, native: ollama.Client
) -> None:
    chat = native.chat(
        model="tiny",
        messages=[{"role": "system", "content": "You are terse."}, *STORY],
        options={"temperature": 0, "num_predict": 12},
    )
    as_string = claude.messages.create(
        model="tiny", max_tokens=12, system="You are terse.", messages=STORY, extra_body=GREEDY
    )
    as_blocks = claude.messages.create(
        model="tiny",
        max_tokens=12,
        system=[{"type": "text", "text": "You are "}, {"type": "text", "text": "terse."}],
        messages=STORY,
        extra_body=GREEDY,
    )
    for message in (as_string, as_blocks):
        assert message.content[0].text == chat.message.content
        assert message.usage.input_tokens == chat.prompt_eval_count


def test_stop_sequences_end_the_answer_before_them(claude: Any) -> None:
    free = claude.messages.create(model="tiny", max_tokens=24, messages=STORY, extra_body=GREEDY)
    text = free.content[0].text
    stop = text[8:11]
    message = claude.messages.create(
        model="tiny",
        max_tokens=24,
        messages=STORY,
        stop_sequences=["no-such-stop", stop],
        extra_body=GREEDY,
    )
    assert message.content[0].text == text[: text.index(stop)]
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == stop
    with claude.messages.stream(
        model="tiny", max_tokens=24, messages=STORY, stop_sequences=[stop], extra_body=GREEDY
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_an_answer_that_ends_by_itself_is_end_turn(claude: Any) -> None:
    message = claude.messages.create(
        model="agent", max_tokens=64, messages=ASK, thinking={"type": "disabled"}
    )
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Let me check.<tool_call>" + (
        '{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )


# --- tools and thinking ---------------------------------------------------------------


def test_tool_use_comes_back_with_thinking_and_text(claude: Any) -> None:
    message = claude.messages.create(
        model="agent",
        max_tokens=64,
        messages=ASK,
        tools=[WEATHER],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    thinking, text, call = message.content
    assert thinking.thinking == THINKING
    assert text.text == "Let me check."
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    assert call.id
    assert message.stop_reason == "tool_use"


def test_streamed_tool_use_and_thinking_are_blocks_in_order(plain: Server, claude: Any) -> None:
    body = {
        "model": "agent",
        "max_tokens": 64,
        "messages": ASK,
        "tools": [WEATHER],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stream": True,
    }
    events = sse_events(plain, body)
    blocks = check_blocks(events)
    assert [b["type"] for b in blocks] == ["thinking", "text", "tool_use"]
    assert blocks[2]["name"] == "get_weather" and blocks[2]["input"] == {}
    deltas: dict[int, list[dict[str, Any]]] = {}
    for name, data in events:
        if name == "content_block_delta":
            deltas.setdefault(data["index"], []).append(data["delta"])
    assert "".join(d["thinking"] for d in deltas[0] if d["type"] == "thinking_delta") == THINKING
    assert "".join(d["text"] for d in deltas[1]) == "Let me check."
    partial = "".join(d["partial_json"] for d in deltas[2])
    assert json.loads(partial) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    with claude.messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == THINKING
    assert final.content[2].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


def test_tool_result_round_trip_is_the_same_conversation_as_native_chat(
    claude: Any, native: ollama.Client
) -> None:
    first = claude.messages.create(
        model="agent",
        max_tokens=64,
        messages=ASK,
        tools=[WEATHER],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    call = first.content[2]
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 C"},
                {"type": "text", "text": "Thanks!"},
            ],
        },
    ]
    second = claude.messages.create(
        model="agent",
        max_tokens=64,
        messages=history,
        tools=[WEATHER],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    chat = native.chat(
        model="agent",
        messages=[
            *ASK,
            {
                "role": "assistant",
                "content": "Let me check.",
                "thinking": THINKING,
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": "Sunny, 24 C", "tool_name": "get_weather"},
            {"role": "user", "content": "Thanks!"},
        ],
        tools=[NATIVE_WEATHER],
        think=True,
    )
    assert second.usage.input_tokens == chat.prompt_eval_count > first.usage.input_tokens
    assert second.content[1].text == chat.message.content
    counted = claude.messages.count_tokens(
        model="agent",
        messages=history,
        tools=[WEATHER],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert counted.input_tokens == second.usage.input_tokens


def test_thinking_disabled_turns_the_templates_thinking_off(claude: Any) -> None:
    message = claude.messages.create(
        model="agent", max_tokens=64, messages=ASK, tools=[WEATHER], thinking={"type": "disabled"}
    )
    assert [block.type for block in message.content] == ["text", "tool_use"]


def test_thinking_on_a_model_without_it_is_answered_without_it(claude: Any) -> None:
    # Ollama relaxes thinking for Anthropic clients (Claude Code asks for it everywhere).
    message = claude.messages.create(
        model="tiny",
        max_tokens=4,
        messages=STORY,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert [block.type for block in message.content] == ["text"]


def test_tool_choice_none_keeps_the_tools_out_of_the_prompt(claude: Any) -> None:
    bare = claude.messages.count_tokens(model="agent", messages=ASK)
    with_tools = claude.messages.count_tokens(model="agent", messages=ASK, tools=[WEATHER])
    none = claude.messages.count_tokens(
        model="agent", messages=ASK, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert with_tools.input_tokens > bare.input_tokens == none.input_tokens


# --- count_tokens ---------------------------------------------------------------------


def test_count_tokens_is_the_prompt_the_message_uses(claude: Any, oracle: Oracle) -> None:
    # Regression: the count's memory estimate is the model's context, not the count's
    # (about 270 MB for the tiny model, over this server's 64M budget).
    system = "You are terse."
    counted = claude.messages.count_tokens(model="tiny", system=system, messages=STORY)
    message = claude.messages.create(
        model="tiny", max_tokens=2, system=system, messages=STORY, extra_body=GREEDY
    )
    expected = oracle.chat_prompt([{"role": "system", "content": system}, *STORY])
    assert counted.input_tokens == message.usage.input_tokens == len(expected)


def test_count_tokens_is_exact_with_the_prompt_cache_on(server: Server, oracle: Oracle) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0) as claude:
        claude.messages.create(model="tiny", max_tokens=2, messages=STORY)  # now cached
        counted = claude.messages.count_tokens(model="tiny", messages=STORY)
    assert counted.input_tokens == len(oracle.chat_prompt(STORY))


# --- errors ---------------------------------------------------------------------------


def test_bad_requests_are_invalid_request_errors(claude: Any, plain: Server) -> None:
    cases = [
        ({"model": "tiny", "messages": STORY}, "max_tokens is required and must be positive"),
        ({"model": "tiny", "max_tokens": 5, "messages": []}, "messages is required"),
        ({"max_tokens": 5, "messages": STORY}, "model is required"),
        (
            {
                "model": "tiny",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
                        ],
                    }
                ],
            },
            "invalid image source type: url. Only base64 images are supported.",
        ),
        (
            {"model": "tiny", "max_tokens": 5, "messages": STORY, "tools": [WEATHER]},
            '"tiny" does not support tools',
        ),
    ]
    for body, message in cases:
        response = httpx.post(plain.url + "/v1/messages", json=body)
        assert response.status_code == 400, body
        error = response.json()
        assert error["type"] == "error"
        assert error["error"] == {"type": "invalid_request_error", "message": message}
        assert error["request_id"].startswith("req_")
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="tiny", max_tokens=0, messages=STORY)
    assert err.value.status_code == 400
    assert err.value.body["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_not_found_error(claude: Any) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="missing", max_tokens=5, messages=STORY)
    assert err.value.status_code == 404
    assert err.value.body["error"] == {
        "type": "not_found_error",
        "message": "model 'missing' not found",
    }
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="missing", messages=STORY)


def test_full_queue_is_overloaded_error_529(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLAMA_MAX_QUEUE="1", OLLAMA_NUM_PARALLEL="1", OLLAMA_DEBUG="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        body = {"model": "tiny", "prompt": "long", "options": {"num_predict": 3000}}
        with httpx.stream("POST", server.url + "/api/generate", json=body) as busy:
            busy_lines = busy.iter_lines()
            next(busy_lines)  # the only slot is taken
            waiting = threading.Thread(
                target=lambda: httpx.post(
                    server.url + "/api/generate",
                    json={**body, "options": {"num_predict": 1}},
                    timeout=120,
                )
            )
            waiting.start()
            assert wait_for(lambda: "waits for a free slot (1 pending)" in server.log())
            with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0) as claude:
                with pytest.raises(anthropic.OverloadedError) as err:
                    claude.messages.create(model="tiny", max_tokens=5, messages=STORY)
        waiting.join(120)
    finally:
        server.stop()
    assert err.value.status_code == 529
    assert err.value.body["error"] == {
        "type": "overloaded_error",
        "message": "server busy, please try again.  maximum pending requests exceeded",
    }


def test_worker_that_dies_is_api_error_500_or_an_error_event(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = start_server(tmp_path, OLLMLX_HEALTH_INTERVAL="0.3", OLLMLX_HEALTH_TIMEOUT="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        claude = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
        # Streamed: the worker is killed after the first event; the stream ends in `error`.
        (worker,) = server.workers()
        with claude.messages.stream(
            model="tiny", max_tokens=1500, messages=STORY, extra_body=GREEDY
        ) as stream:
            events = iter(stream)
            next(events)
            os.kill(worker.pid, signal.SIGKILL)
            with pytest.raises(anthropic.APIStatusError) as streamed:
                for _ in events:
                    pass
        assert streamed.value.body["type"] == "error"
        assert streamed.value.body["error"]["type"] == "api_error"
        assert streamed.value.body["error"]["message"].startswith(
            "model runner has unexpectedly stopped"
        )
        # Not streamed: a hung worker is killed by the health monitor mid-request.
        assert wait_for(lambda: len(server.workers()) == 0)
        claude.messages.create(model="tiny", max_tokens=1, messages=STORY)
        (worker,) = server.workers()
        worker.suspend()
        with pytest.raises(anthropic.InternalServerError) as whole:
            claude.messages.create(model="tiny", max_tokens=5, messages=STORY)
        assert whole.value.status_code == 500
        assert whole.value.body["error"]["type"] == "api_error"
        assert whole.value.body["error"]["message"].startswith(
            "model runner has unexpectedly stopped"
        )
        claude.close()
    finally:
        server.stop()
