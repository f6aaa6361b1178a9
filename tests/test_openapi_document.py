"""ollmlx/api/openapi.yaml documents every route the server has, and installs with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ollmlx.api.app import create_app
from ollmlx.config import Settings

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = REPO / "ollmlx" / "api" / "openapi.yaml"
METHODS = {"get", "head", "post", "put", "patch", "delete"}


def routes_of_the_app() -> set[tuple[str, str]]:
    app = create_app(Settings())
    found = set()
    for route in app.router.routes():
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", route.resource.canonical)
        found.add((route.method.lower(), path))
    return found


def routes_of_the_document() -> set[tuple[str, str]]:
    paths = yaml.safe_load(DOCUMENT.read_text())["paths"]
    return {(method, path) for path, item in paths.items() for method in item if method in METHODS}


def test_the_document_lists_exactly_the_routes_the_server_has() -> None:
    # A new route needs its entry (and the fuzz test then covers it); a removed one, none.
    assert routes_of_the_document() == routes_of_the_app()


def test_the_document_is_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "openapi.yaml" in config["package-data"]["ollmlx.api"]
