"""Option values are checked where they enter: a wrong value is a 400 naming it."""

from __future__ import annotations

import pytest

from ollmlx.config import Settings
from ollmlx.errors import StatusError
from ollmlx.options import resolve_sampling

SETTINGS = Settings()


def resolve(**options: object) -> object:
    return resolve_sampling(SETTINGS, {}, options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_p": 2}, "min_p must be between 0 and 1"),
        ({"min_p": -0.1}, "min_p must be between 0 and 1"),
        ({"top_p": -1}, "top_p must be between 0 and 1"),
        ({"repeat_penalty": -1}, "repeat_penalty must not be negative"),
        ({"seed": 2**70}, 'option "seed" is out of range'),
        ({"top_k": 2**70}, 'option "top_k" is out of range'),
        ({"top_k": "many"}, 'option "top_k" must be of type integer'),
        ({"temperature": 10**400}, 'option "temperature" must be a finite number'),
        ({"num_ctx": 0}, "num_ctx must be between"),
        ({"stop": ["x"] * 65}, "stop: at most 64 strings"),
    ],
)
def test_values_the_engine_cannot_take_are_400(options: dict, message: str) -> None:
    with pytest.raises(StatusError) as error:
        resolve(**options)
    assert error.value.status == 400
    assert message in error.value.message


def test_values_that_only_turn_a_filter_off_are_accepted() -> None:
    sampling = resolve(top_k=10**12, top_p=1.5, seed=-1, temperature=-1)
    assert sampling.top_k == 10**12  # type: ignore[attr-defined]  # the worker clamps it
    assert sampling.seed is None  # type: ignore[attr-defined]  # -1: random, as in Ollama


def test_unknown_options_are_ignored() -> None:
    assert resolve(not_an_option=1) == resolve()
