"""Tool calls and thinking, parsed from a real model's output, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server
from tests.scriptedmodel import TOOL_TEMPLATE, build_scripted_model

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
MARKUP = ("<think>", "</think>", "<tool_call>", "</tool_call>")


@pytest.fixture(scope="module")
def agent(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ollama.Client]:
    model_dir = build_scripted_model(tmp_path_factory.mktemp("scripted") / "agent")
    with server.client() as client:
        client.create(model="agent", from_=str(model_dir))
        yield client


def test_show_lists_tools_and_thinking(agent: ollama.Client) -> None:
    assert agent.show("agent").capabilities == ["completion", "tools", "thinking"]


def test_chat_returns_thinking_content_and_tool_calls(agent: ollama.Client) -> None:
    result = agent.chat(model="agent", messages=ASK, tools=[WEATHER_TOOL], think=True)
    message = result.message
    assert message.thinking == "The user wants the weather."
    assert message.content == "Let me check."
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris"}
    assert result.done_reason == "stop"


def test_streamed_tool_calls_never_leak_markup(agent: ollama.Client, server: Server) -> None:
    body = {"model": "agent", "messages": ASK, "tools": [WEATHER_TOOL], "think": True}
    with httpx.stream("POST", server.url + "/api/chat", json=body) as response:
        chunks = [json.loads(line) for line in response.iter_lines() if line]
    content = "".join(c["message"]["content"] for c in chunks)
    thinking = "".join(c["message"].get("thinking", "") for c in chunks)
    calls = [call for c in chunks for call in c["message"].get("tool_calls", [])]
    assert content == "Let me check."
    assert thinking == "The user wants the weather."
    assert not any(marker in content + thinking for marker in MARKUP)
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert calls[0]["function"]["arguments"] == {"city": "Paris"}
    assert calls[0]["id"].startswith("call_")
    assert chunks[-1]["done"] is True


def test_think_false_turns_the_templates_thinking_off(agent: ollama.Client) -> None:
    result = agent.chat(model="agent", messages=ASK, tools=[WEATHER_TOOL], think=False)
    assert result.message.thinking is None
    assert result.message.content == "Let me check."
    assert result.message.tool_calls is not None


def test_without_tools_the_call_stays_text(agent: ollama.Client) -> None:
    result = agent.chat(model="agent", messages=ASK, think=False)
    assert result.message.tool_calls is None
    assert result.message.content.startswith("Let me check.<tool_call>")


def test_generate_puts_thinking_in_its_own_field(agent: ollama.Client) -> None:
    result = agent.generate(
        model="agent", prompt="weather?", think=True, options={"num_predict": 4}
    )
    assert result.thinking == "The user wants the weather."
    assert result.response == "Let me check."


def test_tool_results_are_accepted_back(agent: ollama.Client) -> None:
    first = agent.chat(model="agent", messages=ASK, tools=[WEATHER_TOOL], think=False)
    history = [
        *ASK,
        first.message,
        {"role": "tool", "content": '{"temperature": 21}', "tool_name": "get_weather"},
    ]
    again = agent.chat(model="agent", messages=history, tools=[WEATHER_TOOL], think=False)
    assert again.done and again.message.role == "assistant"


def test_tools_on_a_model_without_tool_support_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="tiny", messages=ASK, tools=[WEATHER_TOOL])
    assert err.value.status_code == 400
    assert err.value.error == '"tiny" does not support tools'


def test_think_levels_are_accepted_by_every_thinking_model(agent: ollama.Client) -> None:
    # Its template takes no level: a level is think=true there, as in Ollama (#14625).
    for level in ("low", "medium", "high", "max"):
        result = agent.chat(model="agent", messages=ASK, tools=[WEATHER_TOOL], think=level)
        assert result.message.thinking == "The user wants the weather.", level
        assert result.message.tool_calls is not None


def test_think_level_reaches_a_template_that_takes_one(
    agent: ollama.Client, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer

    template = TOOL_TEMPLATE.replace(
        "{{ bos_token }}",
        "{{ bos_token }}{%- if reasoning_effort is defined %}"
        "{{ '<|system|>\\nReasoning: ' + reasoning_effort + '<|end|>\\n' }}{%- endif %}",
    )
    model_dir = build_scripted_model(tmp_path / "effort")
    agent.create(model="effort", from_=str(model_dir), template=template)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # "max" is the template's top level, "high", as Ollama maps it for harmony templates.
    for level, shown in (("low", "low"), ("max", "high")):
        result = agent.generate(
            model="effort", prompt="weather?", think=level, options={"num_predict": 1}
        )
        assert result.context is not None
        assert f"Reasoning: {shown}" in tokenizer.decode(list(result.context)), level
    agent.delete("effort")


def test_unknown_think_level_is_400(agent: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        agent.chat(model="agent", messages=ASK, think="extreme")
    assert err.value.status_code == 400
    assert err.value.error == (
        'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)'
    )


def test_scripted_model_builds_deterministically(tmp_path: Path) -> None:
    a = build_scripted_model(tmp_path / "a")
    b = build_scripted_model(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
