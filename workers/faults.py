"""A test-only hook: raise on demand inside the engine, for the fault-injection tests.

`OLLMLX_TEST_FAULT=<where>:<marker>` makes `inject(where, request)` raise when the
request's text contains `marker`. Places: `advance` (turning one sequence's token into
its events) and `engine` (the engine loop itself, outside every per-request guard). Unset,
which is always the case outside the tests, `inject` is one dictionary lookup.
"""

from __future__ import annotations

import os
from typing import Any

_SPEC = os.environ.get("OLLMLX_TEST_FAULT", "")
_WHERE, _, _MARKER = _SPEC.partition(":")


class InjectedFault(RuntimeError):
    pass


def inject(where: str, request: Any) -> None:
    if not _MARKER or where != _WHERE:
        return
    texts = [request.prompt or ""] + [m.content for m in request.messages or []]
    if any(_MARKER in text for text in texts):
        raise InjectedFault(f"injected fault in {where}")
