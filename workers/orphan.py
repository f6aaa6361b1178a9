"""A worker (or a rank of a group) exits by itself when what started it is gone."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("ollmlx.worker")
_before_exit: list[Callable[[], None]] = []


def before_exit(cleanup: Callable[[], None]) -> None:
    """Run `cleanup` when the worker exits (it skips the interpreter's own teardown)."""
    _before_exit.append(cleanup)


def exit_now(code: int) -> None:
    for cleanup in _before_exit:
        try:
            cleanup()
        except Exception:  # an exit must not fail: the rest still run
            log.exception("cleaning up before the exit failed")
    os._exit(code)


def exit_when_orphaned(parent_pid: int, code: int = 0) -> None:
    """Exit as soon as the parent is gone, even after a SIGKILL of it.

    The parent holds the write end of our stdin: end of file means it died. The
    parent-pid check covers a stdin that is not a pipe. Both work on macOS and Linux.
    """

    def read_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            return
        log.info("the parent closed the pipe; exiting")
        exit_now(code)

    def poll_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.25)
        log.info("parent %d is gone; exiting", parent_pid)
        exit_now(code)

    if not sys.stdin.isatty():
        threading.Thread(target=read_stdin, name="stdin-watch", daemon=True).start()
    threading.Thread(target=poll_parent, name="parent-watch", daemon=True).start()


def exit_when_gone(pid: int, code: int) -> None:
    """Exit with `code` once process `pid` (not our parent: the supervisor, with mlx.launch
    in between) is gone. Its start time tells a reused pid from the same process."""
    import psutil

    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        log.info("process %d is already gone; exiting", pid)
        exit_now(code)

    def poll() -> None:
        while True:
            time.sleep(0.25)
            try:
                process = psutil.Process(pid)
                if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                pass
            log.info("the supervisor (pid %d) is gone; exiting", pid)
            exit_now(code)

    threading.Thread(target=poll, name="supervisor-watch", daemon=True).start()
