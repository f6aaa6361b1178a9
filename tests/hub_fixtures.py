"""Fixtures for pull and create tests: a fake Hub serving the tiny model, and a server
that downloads from it (HF_ENDPOINT) into a Hugging Face cache of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_server
from tests.fakehub import REPO, FakeHub, hub_env


@pytest.fixture
def hub(tiny_model_dir: Path) -> Iterator[FakeHub]:
    fake = FakeHub().start()
    fake.add_repo(REPO, tiny_model_dir)
    yield fake
    fake.stop()


@pytest.fixture
def hub_server(tmp_path: Path, hub: FakeHub) -> Iterator[Server]:
    srv = start_server(tmp_path / "srv", **hub_env(hub, tmp_path / "hf"))
    yield srv
    srv.stop()
