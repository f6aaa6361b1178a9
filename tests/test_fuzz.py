"""Fuzzing: schemathesis drives a real server (the tiny model) from ollmlx/api/openapi.yaml.

Every generated request, valid or not, must get an answer within its timeout that is not
a 5xx, whose status, content type and body match the document; a request the document
calls invalid must be refused with a 4xx. Examples are bounded and derandomized (a fixed
seed), so a failure reproduces on every run.

A few cases are tamed before they are sent, always without changing whether the case is
valid (so schemathesis' negative checks still hold): generation is kept to a few tokens,
`model` names the tiny model, a keep_alive that would unload it soon is made 10 minutes,
and create copies the tiny model instead of pulling or quantizing. /api/pull is left out
(it needs the network, which tests never have), and so is /api/finetune (a training job
runs for minutes). A bigger run: FUZZ_EXAMPLES=200 (see the
README's Development section).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ollmlx.config import parse_duration
from tests.conftest import Server, start_server
from tests.openapi_streams import OPENAPI, stream_problems

schemathesis = pytest.importorskip("schemathesis")

MODEL = "tiny"
NUM_PREDICT = 3  # tokens a fuzzed generation may produce: enough to stream, never slow
MAX_TOKENS, INT64_MIN = 131072, -(2**63)  # the document's bounds on a token budget
TIMEOUT = 60.0  # seconds any one request may take; past it the request hangs (a failure)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
# Boundary values and every type per field (schemathesis' coverage phase): hundreds of cases
# per operation, so only in bigger runs (FUZZ_COVERAGE=1).
COVERAGE = os.environ.get("FUZZ_COVERAGE") == "1"
LOG = os.environ.get("FUZZ_LOG", "")
# /api/pull needs the network (Hugging Face), which tests never have; /api/finetune starts a
# training job that runs for minutes, one at a time (tests/test_training_jobs.py covers it).
EXCLUDED = {"/api/pull", "/api/finetune"}

# Response checks: no 5xx, statuses/content types/bodies as documented, invalid data refused.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "unsupported_method",  # methods a route lacks: 405 with an Allow header
    "allow_header_conformance",
]

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "request-timeout": TIMEOUT,
        "generation": {
            "mode": "all",  # valid and invalid requests
            "max-examples": EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": COVERAGE},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    }
)
schema = schemathesis.openapi.from_path(OPENAPI, config=CONFIG).exclude(path=sorted(EXCLUDED))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("fuzz"), OLLAMA_KEEP_ALIVE="10m")
    try:
        with server.client() as client:
            client.create(model=MODEL, from_=str(tiny_model_dir))
            client.generate(model=MODEL, prompt="")  # loaded once, before the first case
        yield server
    finally:
        server.stop()


@schema.parametrize()
def test_the_api_matches_its_document(case: Any, fuzz_server: Server) -> None:
    tame(case)
    response = case.call(base_url=fuzz_server.url, timeout=TIMEOUT)
    case.validate_response(response)
    if response.status_code == 200:
        content_type = response.headers.get("Content-Type", "")
        assert not stream_problems(case.operation.path, content_type, response.text)
    if LOG:
        _log(case, response)


def _log(case: Any, response: Any) -> None:
    """FUZZ_LOG=FILE: one line per case (operation, mode, status, body, answer)."""
    mode = case.meta.generation.mode.name if case.meta else "-"
    fields = [case.operation.label, mode, str(response.status_code)]
    fields += [repr(case.body)[:200], repr(response.text[:200])]
    with open(LOG, "a", encoding="utf-8") as out:
        out.write("\t".join(fields) + "\n")


def tame(case: Any) -> None:
    """Keep a case fast and the tiny model loaded, without changing its validity."""
    body = case.body
    if not isinstance(body, dict):
        return
    path = case.operation.path
    if path in ("/api/copy",) and body.get("destination") == MODEL:
        body["destination"] = MODEL + "-copy"
    if path == "/api/delete":
        for key in ("model", "name"):
            if body.get(key) == MODEL:
                body[key] = MODEL + "-gone"
        return
    if path == "/api/create":
        _tame_create(body)
        return
    if isinstance(body.get("model"), str) and body["model"]:
        body["model"] = MODEL
    if "keep_alive" in body:
        body["keep_alive"] = _tame_keep_alive(body["keep_alive"])
    if path in ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings"):
        options = body.get("options")
        if options is None:
            body["options"] = options = {}
        if isinstance(options, dict):
            _cap(options, "num_predict", integer=False)
            options.setdefault("num_predict", NUM_PREDICT)
    elif path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        keys = {
            "/v1/chat/completions": ("max_tokens", "max_completion_tokens"),
            "/v1/completions": ("max_tokens",),
            "/v1/responses": ("max_output_tokens",),
        }[path]
        for key in keys:
            _cap(body, key)
        if all(body.get(key) is None for key in keys):
            body[keys[0]] = NUM_PREDICT
    elif path == "/v1/messages":
        _cap(body, "max_tokens", low=1)


def _cap(container: dict[str, Any], key: str, low: int = INT64_MIN, integer: bool = True) -> None:
    """A valid token budget becomes a small one; an invalid one is left to be refused."""
    value = container.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if integer and isinstance(value, float) and not value.is_integer():
        return
    if low <= value < MAX_TOKENS + 1:
        container[key] = NUM_PREDICT


def _tame_keep_alive(value: Any) -> Any:
    """A duration that would unload the model within a minute becomes 10 minutes (every
    reload costs seconds); negative (forever), huge and invalid values are kept."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value
    try:
        seconds = parse_duration(value)
    except ValueError:
        return value
    return "10m" if 0 <= seconds < 60 else value


def _tame_create(body: dict[str, Any]) -> None:
    """Create from the installed tiny model (no pull, no file copies) and never quantize
    (a child process for seconds): the request's other fields are what is fuzzed."""
    if body.get("model") == MODEL or body.get("name") == MODEL:
        body["model" if "model" in body else "name"] = MODEL + "-new"
    if "from" not in body or isinstance(body["from"], str):
        body["from"] = MODEL
    if isinstance(body.get("quantize"), str):
        from ollmlx.acquire.quantize import quant_bits
        from ollmlx.errors import StatusError

        try:
            quant_bits(body["quantize"])
        except StatusError:
            return  # an unknown level is refused before anything runs
        body["quantize"] = None
