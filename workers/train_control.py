"""Status lines and cancellation for the training job program.

Stdout carries only our JSON status lines: at start its descriptor is kept privately and
fd 1 is pointed at stderr, so whatever mlx-lm, rich or a C library prints lands on
stderr. Cancellation (SIGTERM/SIGINT, stdin closed, parent gone) is watched from threads:
SIGTERM and SIGINT reach a watcher through `signal.set_wakeup_fd`, so they are seen even
while the main thread is inside one long MLX call. A watcher only records the request;
the main thread stops at its next check (an iteration boundary), except in phases that
have nothing on disk half-written (loading, tokenizing): there the process exits at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ollmlx.finetune_plan import EXIT_CANCELLED


class Cancelled(Exception):
    """Raised on the main thread at a check after cancellation was asked for."""


def _finite(value: Any) -> Any:
    # json.dumps writes NaN/Infinity, which is not JSON: a diverged loss becomes null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Status:
    """Writes `{"status": ...}` lines to the real stdout, one object a line, flushed."""

    def __init__(self) -> None:
        sys.stdout.flush()
        fd = os.dup(1)
        os.dup2(2, 1)
        self._out = os.fdopen(fd, "w", encoding="utf-8", closefd=True)
        self._lock = threading.Lock()
        self.broken = False  # the reader is gone (EPIPE): nobody wants the result

    def emit(self, status: str, **fields: Any) -> None:
        line = json.dumps({"status": status, **{k: _finite(v) for k, v in fields.items()}})
        with self._lock:
            if self.broken:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True


class Control:
    """The cancellation flag, its watchers, and the iteration the job has reached."""

    def __init__(self, status: Status) -> None:
        self._status = status
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._exit_ok = False
        self.reason = ""
        self.iteration = 0  # the last completed iteration (what a cancel line reports)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or self._status.broken

    def watch(self, parent_pid: int, stdin: bool = True) -> None:
        """Start the watchers (from the main thread: it installs signal handlers)."""
        # The C-level handler writes each signal's number to this pipe from whichever
        # thread the kernel picked (OpenBLAS starts threads before Python does, so a mask
        # cannot keep them out); the watcher reads it at once, even while the main thread
        # is inside one long MLX call that would delay a Python handler.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, frame: None)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

        def take_signals() -> None:
            while True:
                for number in os.read(wake_r, 64):
                    if number in (signal.SIGTERM, signal.SIGINT):
                        self.cancel(signal.Signals(number).name)

        def read_stdin() -> None:
            # The raw descriptor: a daemon thread blocked in sys.stdin's buffered reader
            # holds its lock and aborts the interpreter's shutdown.
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            self.cancel("stdin closed")

        def poll_parent() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.2)
            self.cancel("parent gone")

        threading.Thread(target=take_signals, name="signals", daemon=True).start()
        if stdin and not sys.stdin.isatty():
            threading.Thread(target=read_stdin, name="stdin-watch", daemon=True).start()
        threading.Thread(target=poll_parent, name="parent-watch", daemon=True).start()

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            if self._exit_ok:
                self.exit_now()

    def exit_now(self) -> None:
        self._status.emit("cancelled", iteration=self.iteration, reason=self.reason)
        sys.stderr.flush()
        os._exit(EXIT_CANCELLED)

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(self.reason or "stdout closed")

    @contextlib.contextmanager
    def exit_at_once(self) -> Iterator[None]:
        """A phase with nothing half-written: a cancel ends the process immediately."""
        with self._lock:
            if self._event.is_set():
                self.exit_now()
            self._exit_ok = True
        try:
            yield
        finally:
            with self._lock:
                self._exit_ok = False
