"""Ollama `options` (and Modelfile PARAMETERs) -> a resolved `Sampling`.

Precedence: request options, then the model's stored parameters, then Ollama's defaults
(`DefaultOptions()` in api/types.go). num_ctx without any of them: OLLAMA_CONTEXT_LENGTH,
else the default picked by memory; either way at most the model's trained context.
Unknown keys are ignored with a log line; a wrong type is a 400 with Ollama's wording.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from .config import ConfigError, Settings, parse_kv_cache_type
from .errors import StatusError
from .protocol import Sampling

log = logging.getLogger("ollmlx.options")


INT, FLOAT, BOOL, STRINGS, STRING = "integer", "float32", "boolean", "array", "string"

# Every option Ollama knows, with its JSON type. Those we do not act on (num_gpu,
# use_mmap, ...) are still type-checked and accepted, as Ollama does.
OPTION_TYPES: dict[str, str] = {
    "num_keep": INT,
    "seed": INT,
    "num_predict": INT,
    "top_k": INT,
    "top_p": FLOAT,
    "min_p": FLOAT,
    "typical_p": FLOAT,
    "repeat_last_n": INT,
    "temperature": FLOAT,
    "repeat_penalty": FLOAT,
    "presence_penalty": FLOAT,
    "frequency_penalty": FLOAT,
    "stop": STRINGS,
    "num_ctx": INT,
    "num_batch": INT,
    "num_gpu": INT,
    "main_gpu": INT,
    "use_mmap": BOOL,
    "num_thread": INT,
    # Load-time options of the model's worker (a Modelfile PARAMETER; in a request they
    # are checked and ignored, as Ollama ignores runner options once a model is loaded).
    # Ollama's api/types.go Runner: DraftNumPredict, DefaultOptions: 4.
    "draft_num_predict": INT,
    "kv_cache_type": STRING,  # ollmlx: OLLAMA_KV_CACHE_TYPE for one model
}
DEFAULT_DRAFT_NUM_PREDICT = 4
MAX_DRAFT_NUM_PREDICT = 32

# Model settings a Modelfile PARAMETER (or /api/create's `parameters`) may set besides the
# options, with the values each takes. They choose how the model is served, never how it
# samples: resolve_sampling reads only Sampling's fields, and a request's `options` never
# carry them (an unknown option there is ignored with a log line, as any other).
MODEL_PARAMETERS: dict[str, tuple[str, ...]] = {
    # Served by a worker group (OLLMLX_HOSTFILE): tensor or pipeline parallelism.
    "distributed": ("tensor", "pipeline"),
}

_SAMPLING_FIELDS = set(Sampling.__struct_fields__)
# Stop strings are matched against every token's text: bound the work per token.
MAX_STOPS, MAX_STOP_LENGTH = 64, 4096


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # Go's int: what Ollama's options hold

# Ollama's DefaultOptions() (api/types.go), for every option a worker acts on. Note
# repeat_penalty 1.0 (off): older docs pages say 1.1, the code says 1.0. min_p is unset
# (0) there. num_ctx comes from the settings (see resolve_sampling).
DEFAULT_OPTIONS: dict[str, Any] = {
    "num_predict": -1,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": None,  # -1 there: a random seed
    "num_keep": 4,
}


def check_option(key: str, value: Any) -> Any:
    """The value converted to the option's type, or StatusError with Ollama's message.

    Numbers must also fit the engine: integers in 64 bits, floats finite.
    """
    kind = OPTION_TYPES[key]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == INT and is_number:
        if isinstance(value, float) and not math.isfinite(value):
            raise StatusError(f'option "{key}" must be a finite integer', 400)
        number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            raise StatusError(f'option "{key}" is out of range (a 64-bit integer)', 400)
        return _check_load_option(key, number)
    if kind == FLOAT and is_number:
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise StatusError(f'option "{key}" must be a finite number', 400)
        return number
    if kind == BOOL and isinstance(value, bool):
        return value
    if kind == STRING and isinstance(value, str):
        return _check_load_option(key, value)
    if kind == STRINGS and isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return list(value)
        raise StatusError(f'option "{key}" must be of an array of strings', 400)
    raise StatusError(f'option "{key}" must be of type {kind}', 400)


def check_model_parameter(key: str, value: Any) -> str:
    """A model setting's value (one of its choices), or StatusError naming them."""
    choices = MODEL_PARAMETERS[key]
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in choices:
        raise StatusError(
            f"invalid value for parameter '{key}': {value!r} (must be {' or '.join(choices)})",
            400,
        )
    return str(text)


def check_parameter(key: str, value: Any) -> Any:
    """A stored parameter of /api/create: an option (typed) or a model setting."""
    if key in MODEL_PARAMETERS:
        return check_model_parameter(key, value)
    if key not in OPTION_TYPES:
        raise StatusError(f"unknown parameter '{key}'", 400)
    return check_option(key, value)


def _check_load_option(key: str, value: Any) -> Any:
    if key == "kv_cache_type":
        try:
            return parse_kv_cache_type(value, "kv_cache_type")
        except ConfigError as exc:
            raise StatusError(str(exc), 400) from None
    if key == "draft_num_predict" and not 1 <= value <= MAX_DRAFT_NUM_PREDICT:
        raise StatusError(f"draft_num_predict must be between 1 and {MAX_DRAFT_NUM_PREDICT}", 400)
    return value


def kv_cache_type(parameters: Mapping[str, Any], default: str) -> str:
    """A model's KV cache type: its PARAMETER kv_cache_type, else OLLAMA_KV_CACHE_TYPE."""
    value = parameters.get("kv_cache_type")
    return value if isinstance(value, str) and value else default


def draft_num_predict(parameters: Mapping[str, Any]) -> int:
    value = parameters.get("draft_num_predict")
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_DRAFT_NUM_PREDICT


def parse_parameter(key: str, text: str) -> Any:
    """A Modelfile PARAMETER value (always text) converted to the option's type."""
    key = key.lower()
    if key in MODEL_PARAMETERS:
        return check_model_parameter(key, text)
    if key not in OPTION_TYPES:
        raise StatusError(f"unknown parameter '{key}'", 400)
    kind = OPTION_TYPES[key]
    try:
        if kind == INT:
            return int(float(text))
        if kind == FLOAT:
            return float(text)
        if kind == BOOL:
            return text.strip().lower() in ("1", "true", "yes", "on")
        if kind == STRING:
            return check_option(key, text)
    except ValueError:
        raise StatusError(f"invalid {kind} value for parameter '{key}': {text!r}", 400) from None
    return [text]


def resolve_sampling(
    settings: Settings,
    stored: Mapping[str, Any],
    requested: Mapping[str, Any] | None,
    trained_context: int = 0,
    fits: Callable[[int], bool] | None = None,
) -> Sampling:
    """Every option's final value. `trained_context` (0: unknown) caps num_ctx; an
    automatic num_ctx whose KV cache would not fit (`fits`) steps down as Ollama's
    reduceAutoNumCtxForLoadOOM does (server/sched.go nextLowerAutoNumCtx)."""
    values: dict[str, Any] = dict(DEFAULT_OPTIONS)
    automatic = True  # num_ctx from memory, not asked for (Ollama's usesAutomaticNumCtx)
    values["num_ctx"] = settings.context_length or settings.default_num_ctx
    if settings.context_length:
        automatic = False
    for key, value in stored.items():
        if key in _SAMPLING_FIELDS:
            values[key] = value
            automatic = automatic and key != "num_ctx"
    for key, value in (requested or {}).items():
        if key not in OPTION_TYPES:
            log.warning("invalid option provided: %s", key)
            continue
        if value is None:
            continue
        converted = check_option(key, value)
        if key in _SAMPLING_FIELDS:
            values[key] = converted
            automatic = automatic and key != "num_ctx"
    if values.get("seed") is not None and values["seed"] < 0:
        values["seed"] = None  # Ollama: -1 means a random seed
    sampling = Sampling(**values)
    if sampling.num_ctx < 1 or sampling.num_ctx > settings.max_num_ctx:
        raise StatusError(f"num_ctx must be between 1 and {settings.max_num_ctx}", 400)
    if sampling.num_predict > settings.max_num_predict:
        raise StatusError(f"num_predict must be at most {settings.max_num_predict}", 400)
    if trained_context > 0 and sampling.num_ctx > trained_context:
        if not automatic:  # llm/server.go logs it; the automatic default is capped quietly
            log.warning(
                "requested context size too large for model num_ctx=%d n_ctx_train=%d",
                sampling.num_ctx,
                trained_context,
            )
        sampling.num_ctx = trained_context
    while automatic and fits is not None and not fits(sampling.num_ctx):
        lower = 32768 if sampling.num_ctx > 32768 else 4096 if sampling.num_ctx > 4096 else 0
        if not lower:
            break
        log.debug("default context %d does not fit in memory: %d", sampling.num_ctx, lower)
        sampling.num_ctx = lower
    check_ranges(sampling)
    return sampling


def check_ranges(sampling: Sampling) -> None:
    """Values the sampler cannot take are the client's mistake (400), never the engine's.

    top_k beyond the vocabulary and top_p above 1 simply turn that filter off (the worker
    clamps them, as llama.cpp does); these have no meaning at all:
    """
    if not 0.0 <= sampling.min_p <= 1.0:
        raise StatusError(f"min_p must be between 0 and 1, got {sampling.min_p:g}", 400)
    if sampling.top_p < 0.0:
        raise StatusError(f"top_p must be between 0 and 1, got {sampling.top_p:g}", 400)
    if sampling.repeat_penalty < 0.0:
        raise StatusError(
            f"repeat_penalty must not be negative, got {sampling.repeat_penalty:g}", 400
        )
    if len(sampling.stop) > MAX_STOPS or any(len(s) > MAX_STOP_LENGTH for s in sampling.stop):
        raise StatusError(
            f"stop: at most {MAX_STOPS} strings of at most {MAX_STOP_LENGTH} characters", 400
        )
