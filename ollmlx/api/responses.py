"""POST /v1/responses, stateless, as Ollama's openai/responses.go shapes it.

The request becomes a native chat request and takes the same path as /v1/chat/completions;
`ResponsesStream` turns the worker's events into the response.* SSE events (or, not
streaming, into one response object).
"""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec
from aiohttp import web

from ..errors import StatusError
from ..protocol import DoneEvent, Message, TokenEvent
from .completion import chat_completion, check_chat
from .context import CONTEXT, read_body
from .generation import run_completion
from .openai_convert import (
    decode_image_url,
    require_model,
    think_value,
    tool_arguments,
    tool_call,
)
from .openai_schemas import ResponsesRequest, responses_decoder
from .schemas import ChatRequest

encoder = msgspec.json.Encoder()


def _content(content: Any) -> tuple[str, list[str]]:
    """A message's content (string or input_text/output_text/input_image parts)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise StatusError("content must be a string or array", 400)
    text, images = "", []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            text += str(part.get("text", ""))
        elif kind == "input_image":
            if part.get("image_url"):  # file_id images are not supported: skipped, as in Ollama
                images.append(decode_image_url(str(part["image_url"])))
        elif kind == "input_file":
            raise StatusError("file inputs are not currently supported", 400)
        else:
            raise StatusError(f"unknown content type: {kind}", 400)
    return text, images


def _input_messages(items: list[dict[str, Any]]) -> list[Message]:
    out: list[Message] = []
    names: dict[str, str] = {}  # call_id -> function name, for the tool results
    thinking = ""  # a reasoning item belongs to the next assistant message
    for item in items:
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            summary = "".join(s.get("text", "") for s in item.get("summary") or ())
            thinking = item.get("encrypted_content") or summary
        elif kind == "message":
            text, images = _content(item.get("content"))
            role = item.get("role") or "user"
            role = "system" if role == "developer" else role  # templates know system only
            message = Message(role=role, content=text, images=images or None)
            if role == "assistant" and thinking:
                message.thinking, thinking = thinking, ""
            out.append(message)
        elif kind == "function_call":
            call_id, name = str(item.get("call_id", "")), str(item.get("name", ""))
            names[call_id] = name
            arguments = tool_arguments(item.get("arguments") or "")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            if not (out and out[-1].role == "assistant"):
                out.append(Message(role="assistant"))
            out[-1].tool_calls = [*(out[-1].tool_calls or []), call]
            if thinking:
                out[-1].thinking, thinking = thinking, ""
        elif kind == "function_call_output":
            call_id = str(item.get("call_id", ""))
            text, images = _content(item.get("output"))
            out.append(
                Message(
                    role="tool", content=text, images=images or None, tool_name=names.get(call_id)
                )
            )
        elif not kind:
            raise StatusError("input item missing required 'type' field", 400)
        else:
            raise StatusError(f'unknown input item type: "{kind}"', 400)
    if thinking:
        out.append(Message(role="assistant", thinking=thinking))
    return out


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    """Responses tools are flat ({type, name, parameters}); templates want chat's nesting."""
    if tool.get("type") != "function":
        raise StatusError(f"unsupported tool type: {tool.get('type')}", 400)
    function = {
        k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None
    }
    return {"type": "function", "function": function}


def _format(text: dict[str, Any] | None) -> Any:
    fmt = (text or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return fmt.get("schema")
    return "json" if fmt.get("type") == "json_object" else None


def chat_request(req: ResponsesRequest) -> ChatRequest:
    if req.previous_response_id:
        raise StatusError("previous_response_id is not supported: responses are not stored", 400)
    messages = [Message(role="system", content=req.instructions)] if req.instructions else []
    if isinstance(req.input, str):
        messages += [Message(role="user", content=req.input)] if req.input else []
    else:
        messages += _input_messages(req.input)
    if not any(m.role != "system" for m in messages):
        raise StatusError("input is required", 400)
    options: dict[str, Any] = {"temperature": 1.0 if req.temperature is None else req.temperature}
    if req.top_p is not None:
        options["top_p"] = req.top_p
    if req.max_output_tokens is not None:
        options["num_predict"] = req.max_output_tokens
    return ChatRequest(
        model=req.model,
        messages=messages,
        tools=[_tool(t) for t in req.tools] if req.tools else None,
        stream=req.stream,
        format=_format(req.text),
        options=options,
        think=think_value(req.reasoning.effort if req.reasoning else None),
    )


def _new_id(prefix: str) -> str:
    return f"{prefix}_{random.randrange(1_000_000_000)}"


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesStream:
    """Worker events -> response.* events; the output items are kept for the final object."""

    content_type = "text/event-stream"

    def __init__(self, req: ResponsesRequest) -> None:
        self.req = req
        self.id = _new_id("resp")
        self.created = int(time.time())
        self.sequence = 0
        self.started = False
        self.output: list[dict[str, Any]] = []  # finished items, in order
        self.reasoning: dict[str, Any] | None = None  # the open reasoning item
        self.message: dict[str, Any] | None = None  # the open message item

    def _event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + encoder.encode(payload) + b"\n\n"

    def _index(self) -> int:
        return len(self.output)

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        response = self.response("in_progress", None)
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def _thinking(self, delta: str) -> bytes:
        out = b""
        if self.reasoning is None:
            self.reasoning = {"id": _new_id("rs"), "type": "reasoning", "summary": []}
            out += self._event(
                "response.output_item.added", output_index=self._index(), item=self.reasoning
            )
            self.reasoning["text"] = ""
        self.reasoning["text"] += delta
        return out + self._event(
            "response.reasoning_summary_text.delta",
            item_id=self.reasoning["id"],
            output_index=self._index(),
            summary_index=0,
            delta=delta,
        )

    def _close_reasoning(self) -> bytes:
        if self.reasoning is None:
            return b""
        item_id, text = self.reasoning["id"], self.reasoning.pop("text")
        summary = [{"type": "summary_text", "text": text}]
        item = {"id": item_id, "type": "reasoning", "summary": summary, "encrypted_content": text}
        index, self.reasoning = self._index(), None
        self.output.append(item)
        return self._event(
            "response.reasoning_summary_text.done",
            item_id=item_id,
            output_index=index,
            summary_index=0,
            text=text,
        ) + self._event("response.output_item.done", output_index=index, item=item)

    def _text(self, delta: str) -> bytes:
        out = self._close_reasoning()
        index = self._index()
        if self.message is None:
            item_id = _new_id("msg")
            added = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant"}
            out += self._event(
                "response.output_item.added", output_index=index, item={**added, "content": []}
            )
            out += self._event(
                "response.content_part.added",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=_text_part(""),
            )
            self.message = {"id": item_id, "text": ""}
        self.message["text"] += delta
        return out + self._event(
            "response.output_text.delta",
            item_id=self.message["id"],
            output_index=index,
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def _close_message(self) -> bytes:
        if self.message is None:
            return b""
        item_id, text = self.message["id"], self.message["text"]
        index, self.message = self._index(), None
        part = _text_part(text)
        item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant"}
        item["content"] = [part]
        self.output.append(item)
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        return (
            self._event("response.output_text.done", **where, text=text, logprobs=[])
            + self._event("response.content_part.done", **where, part=part)
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def _function_call(self, call: dict[str, Any]) -> bytes:
        out = self._close_reasoning() + self._close_message()
        converted = tool_call(call, 0)
        item = {
            "id": _new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": converted.id,
            "name": converted.function.name,
            "arguments": "",
        }
        index, arguments = self._index(), converted.function.arguments
        out += self._event("response.output_item.added", output_index=index, item=item)
        where = {"item_id": item["id"], "output_index": index}
        out += self._event("response.function_call_arguments.delta", **where, delta=arguments)
        out += self._event("response.function_call_arguments.done", **where, arguments=arguments)
        item = {**item, "status": "completed", "arguments": arguments}
        self.output.append(item)
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def token(self, event: TokenEvent) -> bytes:
        out = self._start()
        if event.thinking:
            out += self._thinking(event.thinking)
        if event.text:
            out += self._text(event.text)
        for call in event.tool_calls or ():
            out += self._function_call(call)
        return out

    def _finish(self, done: DoneEvent) -> tuple[bytes, str, dict[str, Any]]:
        out = self._start() + self._close_reasoning()
        if self.message is None and all(item["type"] == "reasoning" for item in self.output):
            out += self._text("")  # an empty answer is still a message, as OpenAI sends it
        out += self._close_message()
        status = "incomplete" if done.done_reason == "length" else "completed"
        return out, status, self.response(status, done)

    def done(self, event: DoneEvent, total: int, load: int) -> bytes:
        out, status, response = self._finish(event)
        return out + self._event(f"response.{status}", response=response)

    def error(self, message: str) -> bytes:
        return self._event("error", code="api_error", message=message, param=None)

    def whole(self, event: TokenEvent, done: DoneEvent, total: int, load: int) -> bytes:
        self.token(event)  # builds the same items the stream would; its events are unused
        return encoder.encode(self._finish(done)[2])

    def response(self, status: str, done: DoneEvent | None) -> dict[str, Any]:
        """The response object, with the request's settings echoed as Ollama does."""
        req = self.req
        reasoning = None
        if req.reasoning and (req.reasoning.effort or req.reasoning.summary):
            reasoning = {"effort": req.reasoning.effort, "summary": req.reasoning.summary}
        usage = None
        if done is not None:
            prompt, output = done.prompt_eval_count, done.eval_count
            usage = {
                "input_tokens": prompt,
                "output_tokens": output,
                "total_tokens": prompt + output,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "completed_at": int(time.time()) if done is not None else None,
            "status": status,
            "incomplete_details": incomplete,
            "model": req.model,
            "previous_response_id": None,
            "instructions": req.instructions or None,
            "output": list(self.output) if done is not None else [],
            "error": None,
            "tools": req.tools or [],
            "tool_choice": "auto",
            "truncation": req.truncation or "disabled",
            "parallel_tool_calls": True,
            "text": {"format": (req.text or {}).get("format") or {"type": "text"}},
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "reasoning": reasoning,
            "usage": usage,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": None,
            "store": False,
            "background": req.background,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }


async def responses(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    started = time.perf_counter_ns()
    body: ResponsesRequest = await read_body(request, responses_decoder)
    req = chat_request(body)
    require_model(ctx, req.model)
    checked = check_chat(ctx, req)
    completion = chat_completion(req, checked)
    dialect = ResponsesStream(body)
    return await run_completion(
        request, ctx, checked.stored, completion, checked.keep_alive, body.stream, dialect, started
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/responses", responses)
