"""Structured outputs (format) and logprobs, through the official client."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import jsonschema
import ollama
import pytest

from tests.conftest import Server
from tests.oracle import Oracle

# No additional properties: a bounded document, so even a sampled random model must finish
# it within num_predict (an extra key's string has no bound). With repeat_penalty 1.0,
# Ollama's default, seed 0 at temperature 1 wrote such a key until the token limit.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "address", "active"],
    "additionalProperties": False,
}
SCHEMAS = [
    PERSON,
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 2,
        "maxItems": 5,
    },
    {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_output_validates_against_the_schema(
    client: ollama.Client, schema: dict, temperature: float
) -> None:
    for seed in range(3):
        result = client.generate(
            model="tiny",
            prompt=f"describe something {seed}",
            format=schema,
            options={"temperature": temperature, "seed": seed, "num_predict": 400},
        )
        jsonschema.validate(json.loads(result.response), schema)
        # It ends when the JSON is complete, not at the token limit.
        assert result.done_reason == "stop"
        assert result.eval_count is not None and result.eval_count < 400


def test_streamed_chat_output_validates(client: ollama.Client) -> None:
    for seed in range(3):
        parts = list(
            client.chat(
                model="tiny",
                messages=[{"role": "user", "content": f"a person please {seed}"}],
                format=PERSON,
                options={"temperature": 0.9, "seed": seed, "num_predict": 400},
                stream=True,
            )
        )
        text = "".join(p.message.content for p in parts)
        jsonschema.validate(json.loads(text), PERSON)
        assert len(parts) > 5  # really streamed, token by token


def test_format_json_gives_a_json_object(client: ollama.Client) -> None:
    for temperature in (0.0, 1.0):
        result = client.generate(
            model="tiny", prompt="json please", format="json", options={"temperature": temperature}
        )
        assert isinstance(json.loads(result.response), dict)
        chat = client.chat(
            model="tiny", messages=[{"role": "user", "content": "json"}], format="json"
        )
        assert isinstance(json.loads(chat.message.content), dict)


def test_invalid_formats_are_400(server: Server) -> None:
    bad_schema = {"model": "tiny", "prompt": "hi", "format": {"type": "no-such-type"}}
    response = httpx.post(server.url + "/api/generate", json=bad_schema)
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid JSON schema in format:")
    bad_value = {"model": "tiny", "messages": [], "format": "xml"}
    response = httpx.post(server.url + "/api/chat", json=bad_value)
    assert response.status_code == 400
    assert response.json() == {
        "error": 'invalid format: "xml"; expected "json" or a valid JSON Schema object'
    }


def test_logprobs_match_in_process_mlx_lm(client: ollama.Client, tiny_model_dir: Path) -> None:
    oracle = Oracle(tiny_model_dir)
    result = client.generate(
        model="tiny",
        prompt="logprob check",
        options={"temperature": 0, "num_predict": 5},
        logprobs=True,
        top_logprobs=3,
    )
    assert result.logprobs is not None and len(result.logprobs) == 5
    prompt = oracle.chat_prompt([{"role": "user", "content": "logprob check"}])
    expected = oracle.greedy_logprobs(prompt, 5)
    for entry, (token, value, top) in zip(result.logprobs, expected, strict=True):
        assert entry.token == oracle.tokenizer.decode([token])
        assert math.isclose(entry.logprob, value, abs_tol=1e-4)
        assert entry.top_logprobs is not None and len(entry.top_logprobs) == 3
        assert [t.token for t in entry.top_logprobs] == [oracle.tokenizer.decode([t]) for t in top]
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert entry.top_logprobs[0].logprob == entry.logprob  # greedy takes the best


def test_logprobs_in_streamed_chat(client: ollama.Client, server: Server) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 4},
        "logprobs": True,
    }
    with httpx.stream("POST", server.url + "/api/chat", json=body) as response:
        chunks = [json.loads(line) for line in response.iter_lines() if line]
    tokens = [c for c in chunks if not c["done"]]
    assert len(tokens) == 4
    for chunk in tokens:
        (entry,) = chunk["logprobs"]
        assert entry["logprob"] <= 0
        assert bytes(entry["bytes"]).decode() == entry["token"]
        assert "top_logprobs" not in entry
