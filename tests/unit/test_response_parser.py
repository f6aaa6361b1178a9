"""The response parser: content, thinking and tool calls split out of streamed text."""

from __future__ import annotations

import json
from typing import Any

from ollmlx_worker.parsing import Parsed, ResponseParser

THINK = ("<think>", "</think>")
TOOL = ("<tool_call>", "</tool_call>")
TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]


def json_tool_parser(text: str, tools: Any) -> dict[str, Any]:
    return json.loads(text)


def parser(start_thinking: bool = False, tools: Any = TOOLS, keep: bool = True) -> ResponseParser:
    return ResponseParser(THINK, TOOL, json_tool_parser, tools, start_thinking, keep)


def run(p: ResponseParser, pieces: list[str]) -> Parsed:
    total = Parsed()
    for part in [*(p.feed(piece) for piece in pieces), p.flush()]:
        total.content += part.content
        total.thinking += part.thinking
        total.tool_calls += part.tool_calls
    return total


def test_markers_split_across_pieces_never_leak() -> None:
    pieces = ["<th", "ink>why", "</thi", "nk>\nso ", "<tool", '_call>{"name": "get_weather", ']
    pieces += ['"arguments": {"city": "Paris"}}</tool_', "call>"]
    result = run(parser(), pieces)
    assert result.thinking == "why"
    assert result.content == "so "
    (call,) = result.tool_calls
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == {"city": "Paris"}
    assert call["id"].startswith("call_")


def test_a_prompt_that_opens_thinking_starts_in_thinking() -> None:
    result = run(parser(start_thinking=True), ["because", "</think>", "answer"])
    assert (result.thinking, result.content) == ("because", "answer")


def test_thinking_off_drops_the_thoughts() -> None:
    result = run(parser(start_thinking=True, keep=False), ["because", "</think>answer"])
    assert (result.thinking, result.content) == ("", "answer")


def test_without_tools_the_markup_stays_text() -> None:
    text = '<tool_call>{"name": "x"}</tool_call>'
    assert run(parser(tools=None), [text]).content == text


def test_an_unparsable_tool_call_comes_back_as_text() -> None:
    result = run(parser(), ["<tool_call>not json</tool_call>"])
    assert result.content == "<tool_call>not json</tool_call>"
    assert result.tool_calls == []


def test_a_tool_call_left_open_is_parsed_at_the_end() -> None:
    result = run(parser(), ['<tool_call>{"name": "get_weather", "arguments": {}}'])
    assert [c["function"]["name"] for c in result.tool_calls] == ["get_weather"]


def test_string_arguments_are_decoded() -> None:
    call = '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}'
    result = run(parser(), [f"<tool_call>{call}</tool_call>"])
    assert result.tool_calls[0]["function"]["arguments"] == {"city": "Oslo"}
