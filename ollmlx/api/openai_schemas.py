"""OpenAI's request and response shapes (chat, completions, models), as msgspec Structs.

Unknown request fields are ignored, as Ollama does. Response fields that OpenAI always
sends (even as null) have no default, so they are always encoded; optional extras
(`reasoning`, `tool_calls`, `usage` on chunks) are omitted when empty.
"""

from __future__ import annotations

from typing import Any

import msgspec


class FunctionCall(msgspec.Struct):
    name: str = ""
    # A JSON string in OpenAI's API; some clients send the object itself.
    arguments: str | dict[str, Any] = ""


class InToolCall(msgspec.Struct):
    id: str = ""
    type: str = "function"
    function: FunctionCall = msgspec.field(default_factory=FunctionCall)


class ChatMessage(msgspec.Struct):
    role: str = ""
    # A string, or content parts ({"type": "text"} / {"type": "image_url"}).
    content: str | list[Any] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[InToolCall] | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class JsonSchemaFormat(msgspec.Struct):
    name: str = ""
    schema: Any = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct):
    type: str = "text"
    json_schema: JsonSchemaFormat | None = None


class Reasoning(msgspec.Struct):
    effort: str | None = None


class ChatCompletionRequest(msgspec.Struct):
    model: str = ""
    messages: list[ChatMessage] = msgspec.field(default_factory=list)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int = 0


class TextCompletionRequest(msgspec.Struct):
    model: str = ""
    prompt: str | list[str] = ""
    suffix: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    # Legacy completions: the number of most likely tokens to return per position.
    logprobs: int | None = None


class OutFunction(msgspec.Struct):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class OutToolCall(msgspec.Struct):
    id: str
    index: int
    type: str
    function: OutFunction


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class ContentLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct):
    content: list[ContentLogprob]


class AssistantMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str
    # Ollama names the thinking text `reasoning`; vLLM/DeepSeek clients read `reasoning_content`.
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[OutToolCall] | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[OutToolCall] | None = None


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int  # prompt tokens served from the prompt cache


class Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None


class ChatCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage


class ChatCompletionChunk(msgspec.Struct, omit_defaults=True):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(msgspec.Struct):
    """The legacy completions shape: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(msgspec.Struct):
    text: str
    index: int
    finish_reason: str | None
    logprobs: CompletionLogprobs | None


class TextCompletion(msgspec.Struct, omit_defaults=True):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(msgspec.Struct):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    object: str
    data: list[ModelCard]


chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
completion_decoder = msgspec.json.Decoder(TextCompletionRequest)


class ResponsesReasoning(msgspec.Struct):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(msgspec.Struct):
    """/v1/responses, stateless: the whole conversation comes in `input` every time."""

    model: str = ""
    # A user message as a string, or items: messages, function_call(_output), reasoning.
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    reasoning: ResponsesReasoning | None = None
    text: dict[str, Any] | None = None  # {"format": {"type": "json_schema", "schema": ...}}
    tools: list[dict[str, Any]] | None = None
    truncation: str | None = None
    previous_response_id: str | None = None
    background: bool = False


responses_decoder = msgspec.json.Decoder(ResponsesRequest)
