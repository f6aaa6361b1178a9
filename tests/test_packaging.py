"""pyproject lists every package by hand (workers/ installs as ollmlx_worker): none forgotten."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_and_mapped() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapped = set(config["packages"]), config["package-dir"]
    on_disk = {
        ".".join(("ollmlx_worker" if top == "workers" else top, *rest))
        for top in ("ollmlx", "workers")
        for init in (REPO / top).rglob("__init__.py")
        for rest in [init.parent.relative_to(REPO / top).parts]
    }
    on_disk.add("ollmlx.data")  # data only (the alias table), no __init__.py
    assert listed == on_disk
    for package in listed:
        # setuptools maps a subpackage through its top package's folder.
        top, *rest = package.split(".")
        folder = "/".join([mapped[top], *rest])
        assert folder == package.replace("ollmlx_worker", "workers", 1).replace(".", "/")
        assert (REPO / folder).is_dir()
