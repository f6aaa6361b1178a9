"""Streamed answers checked against ollmlx/api/openapi.yaml, line by line and event by event.

schemathesis validates JSON bodies and each SSE event's envelope; the JSON inside a stream
(NDJSON lines, SSE `data`) is checked here against the document's schemas, and so is the
end of every stream: a final line (`done: true`, `success`, `[DONE]`, `message_stop`,
`response.completed`) and no error line, since a fuzzed request that was accepted must
finish.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
import yaml

OPENAPI = Path(__file__).resolve().parent.parent / "ollmlx" / "api" / "openapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
_URI = "urn:ollmlx:openapi"
_REGISTRY: referencing.Registry[Any] = referencing.Registry().with_resource(
    _URI, referencing.Resource.from_contents(DOC, referencing.jsonschema.DRAFT202012)
)
SCHEMAS = DOC["components"]["schemas"]

# path -> the schema of one NDJSON line, and what its last line must say
NDJSON = {
    "/api/generate": ("GenerateResponse", lambda line: line.get("done") is True),
    "/api/chat": ("ChatResponse", lambda line: line.get("done") is True),
    "/api/create": ("ProgressStatus", lambda line: line.get("status") == "success"),
}
# path -> the schema of one SSE event (its `data` has a contentSchema), and the last event
SSE = {
    "/v1/chat/completions": ("ChatCompletionEvent", lambda e: e["data"] == "[DONE]"),
    "/v1/completions": ("TextCompletionEvent", lambda e: e["data"] == "[DONE]"),
    "/v1/responses": (
        "ResponsesEvent",
        lambda e: e["event"] in ("response.completed", "response.incomplete"),
    ),
    "/v1/messages": ("AnthropicEvent", lambda e: e["event"] == "message_stop"),
}


def validator(schema: Any) -> jsonschema.Draft202012Validator:
    """A validator for a schema of the document (its $refs resolve within it)."""
    return jsonschema.Draft202012Validator(_rebase(schema), registry=_REGISTRY)


def _rebase(schema: Any) -> Any:
    """Local refs ("#/components/...") made absolute, so they resolve in the document."""
    if isinstance(schema, dict):
        return {
            k: (
                _URI + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _rebase(v)
            )
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


def content_schema(schema: Any) -> Any:
    """The `contentSchema` of an SSE event's `data` (possibly beside `[DONE]` in an anyOf)."""
    if "contentSchema" in schema:
        return schema["contentSchema"]
    return next(content_schema(s) for s in schema["anyOf"] if "contentSchema" in str(s))


def _is_local_ref(key: str, value: Any) -> bool:
    return key == "$ref" and isinstance(value, str) and value.startswith("#")


def sse_events(text: str) -> list[dict[str, str]]:
    """`event:` and `data:` lines -> events ({"event", "data"}), as EventSource reads them."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if data:
            events.append({"event": event, "data": "\n".join(data)})
    return events


def stream_problems(path: str, content_type: str, text: str) -> list[str]:
    """What is wrong with a streamed 200 answer of `path` (empty: nothing)."""
    if content_type.startswith("application/x-ndjson") and path in NDJSON:
        name, is_last = NDJSON[path]
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        check = validator(SCHEMAS[name])
        items = [(line, line) for line in lines]
    elif content_type.startswith("text/event-stream") and path in SSE:
        name, is_last = SSE[path]
        events = sse_events(text)
        check = validator(content_schema(SCHEMAS[name]["properties"]["data"]))
        items = [(e, json.loads(e["data"])) for e in events if e["data"] != "[DONE]"]
        lines = events  # type: ignore[assignment]
    else:
        return []
    problems = []
    if not lines:
        return ["an empty stream"]
    for _, data in items:
        if isinstance(data, dict) and (data.get("error") or data.get("type") == "error"):
            problems.append(f"an error in the stream: {json.dumps(data)[:300]}")
        for error in check.iter_errors(data):
            problems.append(f"{name}: {error.message} in {json.dumps(data)[:300]}")
    if not is_last(lines[-1]):
        problems.append(f"the stream ends without its final line: {json.dumps(lines[-1])[:300]}")
    return problems
