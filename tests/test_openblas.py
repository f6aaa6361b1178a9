"""Workers preload the system OpenBLAS on Linux; greedy outputs stay the same without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ollmlx.serving.openblas import OPENBLAS_THREAD_TIMEOUT, find_openblas, with_openblas
from tests.conftest import start_server

OPENBLAS = find_openblas()
pytestmark = pytest.mark.skipif(
    OPENBLAS is None,
    reason="no system OpenBLAS (Linux: apt-get install libopenblas0-pthread)",
)

PROMPTS = ["Once upon a time", "The quick brown fox", "List three colors:"]


def greedy_outputs(tmp: Path, model_dir: Path, **env: str) -> tuple[list[str], bool, str]:
    """Greedy answers through a fresh server, whether its worker maps OpenBLAS, and the
    worker's OPENBLAS_THREAD_TIMEOUT ("" when unset)."""
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
        environ = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
        timeout = next(
            (e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"OPENBLAS_THREAD_")),
            "",
        )
        return outputs, mapped, timeout
    finally:
        server.stop()


def test_greedy_outputs_are_the_same_with_and_without_openblas(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with_blas, mapped, timeout = greedy_outputs(tmp_path / "with", tiny_model_dir)
    without, mapped_without, _ = greedy_outputs(
        tmp_path / "without", tiny_model_dir, OLLMLX_NO_OPENBLAS="1"
    )
    assert mapped, "the worker did not load the system OpenBLAS"
    assert timeout == OPENBLAS_THREAD_TIMEOUT  # its idle threads do not spin
    assert not mapped_without, "OLLMLX_NO_OPENBLAS=1 still preloaded OpenBLAS"
    assert all(with_blas)
    assert with_blas == without


def test_the_spin_setting_is_a_default_the_user_can_override() -> None:
    assert OPENBLAS_THREAD_TIMEOUT == "4"
    env = with_openblas({"LD_PRELOAD": ""})
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert env["LD_PRELOAD"] == OPENBLAS
    assert with_openblas(env) == env  # applied twice (the benchmark's re-exec): the same
    mine = with_openblas({"OPENBLAS_THREAD_TIMEOUT": "28"})
    assert mine["OPENBLAS_THREAD_TIMEOUT"] == "28"
