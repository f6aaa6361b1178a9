"""Workers preload the system OpenBLAS on Linux; greedy outputs stay the same without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ollmlx.serving.runner import find_openblas
from tests.conftest import start_server

OPENBLAS = find_openblas()
pytestmark = pytest.mark.skipif(
    OPENBLAS is None,
    reason="no system OpenBLAS (Linux: apt-get install libopenblas0-pthread)",
)

PROMPTS = ["Once upon a time", "The quick brown fox", "List three colors:"]


def greedy_outputs(tmp: Path, model_dir: Path, **env: str) -> tuple[list[str], bool]:
    """Greedy answers through a fresh server, and whether its worker maps OpenBLAS."""
    server = start_server(tmp, **env)
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(model_dir))
            options = {"temperature": 0, "num_predict": 24}
            outputs = [
                client.generate(model="tiny", prompt=p, options=options).response for p in PROMPTS
            ]
        (worker,) = server.workers()
        # The real file behind the Debian alternatives symlink is what the loader maps.
        library = os.path.realpath(str(OPENBLAS))
        mapped = library in Path(f"/proc/{worker.pid}/maps").read_text()
        return outputs, mapped
    finally:
        server.stop()


def test_greedy_outputs_are_the_same_with_and_without_openblas(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with_blas, mapped = greedy_outputs(tmp_path / "with", tiny_model_dir)
    without, mapped_without = greedy_outputs(
        tmp_path / "without", tiny_model_dir, OLLMLX_NO_OPENBLAS="1"
    )
    assert mapped, "the worker did not load the system OpenBLAS"
    assert not mapped_without, "OLLMLX_NO_OPENBLAS=1 still preloaded OpenBLAS"
    assert all(with_blas)
    assert with_blas == without
