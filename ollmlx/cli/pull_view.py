"""`ollmlx pull NAME`: Ollama's pull output, one progress bar per file.

    pulling manifest
    pulling ae388330251f: 100% ▕██████████████████▏ 560 KB/560 KB  12 MB/s      0s
    verifying sha256 digest
    writing manifest
    success

On a terminal the bars redraw in place (plain ANSI: cursor up, clear line); otherwise each
status is printed once when it first appears, so logs stay readable.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from .client import Client

BAR_WIDTH = 18


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" and count < 10 else f"{count:.0f} {unit}"
        count /= 1000
    return f"{count:.0f} TB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


@dataclass
class Bar:
    """One file's progress; speed is smoothed so the time left does not jump about."""

    label: str
    total: int
    completed: int = 0
    started: float = field(default_factory=time.monotonic)
    _mark: tuple[float, int] | None = None
    rate: float = 0.0

    def update(self, completed: int, now: float) -> None:
        when, done = self._mark or (self.started, 0)
        if now - when >= 0.25 and completed > done:
            instant = (completed - done) / (now - when)
            self.rate = instant if self.rate == 0 else 0.7 * self.rate + 0.3 * instant
            self._mark = (now, completed)
        self.completed = completed

    def render(self, width: int = BAR_WIDTH) -> str:
        fraction = self.completed / self.total if self.total else 1.0
        filled = round(fraction * width)
        bar = "█" * filled + " " * (width - filled)
        text = f"{self.label}: {fraction:4.0%} ▕{bar}▏ {_size(self.completed)}/{_size(self.total)}"
        if self.completed < self.total and self.rate > 0:
            left = (self.total - self.completed) / self.rate
            text += f"  {_size(self.rate)}/s  {_duration(left):>6}"
        return text


class PullView:
    """Status lines and bars, in the order they first appeared."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out, self.live = out, live
        self.lines: list[str | Bar] = []
        self.bars: dict[str, Bar] = {}
        self.drawn = 0

    def handle(self, part: dict[str, Any], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        status, digest = str(part.get("status", "")), str(part.get("digest", ""))
        if digest and part.get("total"):
            bar = self.bars.get(digest)
            if bar is None:
                bar = self.bars[digest] = Bar(status, int(part["total"]), started=now)
                self.lines.append(bar)
                if not self.live:
                    print(status, file=self.out)
            bar.update(int(part.get("completed") or 0), now)
        elif status and status not in self.lines:
            self.lines.append(status)
            if not self.live:
                print(status, file=self.out)
        if self.live:
            self.draw()

    def draw(self) -> None:
        columns = shutil.get_terminal_size((100, 24)).columns
        text = "\x1b[A" * self.drawn
        for line in self.lines:
            rendered = line.render() if isinstance(line, Bar) else line
            text += "\r\x1b[2K" + rendered[: columns - 1] + "\n"
        self.out.write(text)
        self.out.flush()
        self.drawn = len(self.lines)


def cmd_pull(client: Client, args: argparse.Namespace) -> None:
    view = PullView(sys.stderr, live=sys.stderr.isatty())
    body = {"model": args.model, "insecure": bool(getattr(args, "insecure", False))}
    for part in client.stream("/api/pull", body):
        view.handle(part)
