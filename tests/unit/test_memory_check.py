"""The engine's memory check: a recent reading of the OS's free memory stands for small
requests (reading it costs 0.2 ms a request on Linux); a large request, or one that may
be refused, always gets a fresh reading. The OS's free memory cannot be changed on
demand, so psutil's reading is replaced here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from ollmlx.errors import StatusError
from workers import memory
from workers.engine import Engine
from workers.memory import FREE_MEMORY_FRESH

MIB = 1 << 20


class _OS:
    def __init__(self, free: int) -> None:
        self.free = free
        self.readings = 0

    def virtual_memory(self) -> SimpleNamespace:
        self.readings += 1
        return SimpleNamespace(available=self.free)


@pytest.fixture
def os_memory(monkeypatch: pytest.MonkeyPatch) -> _OS:
    fake = _OS(1000 * MIB)
    monkeypatch.setattr(psutil, "virtual_memory", fake.virtual_memory)
    return fake


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: now[0])
    return now


def _engine() -> Engine:
    engine = Engine(Path("unused"))
    engine._kv_bytes_per_token = MIB
    return engine


def test_small_requests_share_a_recent_reading(os_memory: _OS, clock: list[float]) -> None:
    engine = _engine()
    for _ in range(5):
        engine._check_memory(10)
    assert os_memory.readings == 1
    clock[0] += FREE_MEMORY_FRESH + 0.1  # stale: asked again
    engine._check_memory(10)
    assert os_memory.readings == 2


def test_a_large_request_and_a_refusal_read_the_memory_afresh(
    os_memory: _OS, clock: list[float]
) -> None:
    engine = _engine()
    engine._check_memory(10)
    engine._check_memory(200)  # more than an eighth of the reading: asked again
    assert os_memory.readings == 2
    # Memory ran out since: a request that the old reading would let through is refused
    # on a fresh one, with what is free now.
    os_memory.free = 300 * MIB
    with pytest.raises(StatusError) as err:
        engine._check_memory(400)
    assert os_memory.readings == 3
    assert (
        "needs about 400 MiB" in err.value.message and "only 300 MiB is free" in err.value.message
    )
    # And one that fits what is free now passes.
    engine._check_memory(100)
