"""The official ollama JavaScript client works against ollmlx unchanged (needs node+npm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import ollama
import pytest

from tests.conftest import Server

JS = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def js_client() -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the JavaScript client test")
    if not (JS / "node_modules" / "ollama").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent"],
            cwd=JS,
            check=True,
            timeout=300,
        )
    return JS / "client_check.mjs"


def test_official_js_client(js_client: Path, server: Server, client: ollama.Client) -> None:
    expected = client.generate(
        model="tiny", prompt="hello from js", options={"temperature": 0, "num_predict": 8}
    )
    result = subprocess.run(
        ["node", str(js_client)],
        env={**os.environ, "OLLAMA_HOST": server.url},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout)
    assert "tiny:latest" in report["models"]
    assert report["generate"]["response"] == expected.response
    assert report["generate"]["eval_count"] == 8
    assert report["generate"]["done_reason"] == "length"
    assert report["chat"]["chunks"] >= 9
    assert report["error"] == {"status": 404, "message": "model 'missing-model' not found"}
