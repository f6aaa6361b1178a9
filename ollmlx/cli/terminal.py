"""Terminal helpers for `ollmlx run`: a spinner on stderr and word wrap for streamed text."""

from __future__ import annotations

import sys
import threading
import unicodedata
from types import TracebackType
from typing import TextIO

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
ASCII_FRAMES = "|/-\\"


class Spinner:
    """Frames on a TTY stream while something loads; nothing at all when not a TTY."""

    def __init__(self, stream: TextIO | None = None, message: str = "") -> None:
        self.stream = stream or sys.stderr
        self.message = message
        self.enabled = _isatty(self.stream)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        frames = FRAMES
        try:
            FRAMES.encode(self.stream.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            frames = ASCII_FRAMES  # a C locale cannot print braille
        self.frames = frames

    def start(self) -> Spinner:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Idempotent; clears the spinner's line so the answer starts clean."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def _spin(self) -> None:
        index = 0
        while not self._stop.wait(0.1 if index else 0):
            frame = self.frames[index % len(self.frames)]
            text = f"{self.message} {frame}" if self.message else frame
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            index += 1

    def __enter__(self) -> Spinner:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def char_width(ch: str) -> int:
    """Columns one character takes: 2 for wide East Asian characters, 0 for combining."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


class WordWrapper:
    """Streams text, moving a word that would cross the margin to the next line.

    Ollama's algorithm: characters print as they come; when the line is full, the cursor
    goes back over the unfinished word, clears to the end of the line, and the word is
    printed again on a new line. `width` 0 turns wrapping off.
    """

    def __init__(self, out: TextIO, width: int) -> None:
        self.out = out
        self.width = width if width >= 15 else 0
        self.line_length = 0
        self.word = ""

    def reset(self) -> None:
        self.line_length, self.word = 0, ""

    def write(self, text: str) -> None:
        if not self.width:
            self.out.write(text)
        else:
            self.out.write("".join(self._wrap(ch) for ch in text))
        self.out.flush()

    def _wrap(self, ch: str) -> str:
        limit = self.width - 5
        if self.line_length + 1 > limit and ch not in "\n\r":
            word_width = sum(char_width(c) for c in self.word)
            if word_width > self.width - 10:  # a word longer than a line: just go on
                self.word, self.line_length = "", 0
                return ch
            back = f"\x1b[{word_width}D" if word_width else ""
            self.line_length = word_width + char_width(ch)
            moved, self.word = self.word, ("" if ch in " \t" else self.word + ch)
            return f"{back}\x1b[K\n{moved}{ch}"
        self.line_length += char_width(ch)
        if ch in " \t" or char_width(ch) >= 2:
            self.word = ""
        elif ch in "\n\r":
            self.line_length, self.word = 0, ""
        else:
            self.word += ch
        return ch
