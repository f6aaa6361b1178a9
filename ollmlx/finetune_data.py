"""Parse and check fine-tuning data before any training starts.

A leaf module (no MLX, nothing else from ollmlx): the supervisor checks an upload here and
answers a bad record with a 400 that names its line, long before a worker loads a model.
Records are in mlx-lm's formats (`mlx_lm/tuner/datasets.py`), one format per file:

    chat         {"messages": [{"role": "user", "content": "..."}, ...], "tools": [...]}
    completions  {"prompt": "...", "completion": "..."}
    text         {"text": "..."}

Sources: a list of records (named by index), a JSONL file or a folder holding `train.jsonl`
and optionally `valid.jsonl` (named by 1-based line), or the raw bytes of an upload.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from .errors import StatusError

Format = Literal["chat", "completions", "text"]
ROLES = ("system", "user", "assistant", "tool")

# Bounds, so that an absurd upload is a 400 and not a MemoryError in the supervisor.
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_RECORDS = 1_000_000


class DataError(StatusError, ValueError):
    """Training data that cannot be used; `status` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status)


@dataclass(frozen=True)
class Limits:
    line_bytes: int = MAX_LINE_BYTES
    file_bytes: int = MAX_FILE_BYTES
    records: int = MAX_RECORDS


@dataclass
class Dataset:
    """The checked records of one split, in order, with where each came from."""

    name: str  # "train.jsonl", "train", ...: how messages name the source
    format: Format
    records: list[dict[str, Any]]
    # Per record: its 1-based line in a file, or its 0-based index in an inline list.
    positions: list[int]
    by_line: bool  # positions are file lines (else list indices)
    size: int = 0  # bytes of JSON, as read or as written
    longest: int = 0  # bytes of the longest record's text: a bound for memory estimates

    def __len__(self) -> int:
        return len(self.records)

    def where(self, index: int) -> str:
        """How to name record `index` to the user: `train.jsonl line 7` or `train[3]`."""
        if self.by_line:
            return f"{self.name} line {self.positions[index]}"
        return f"{self.name}[{self.positions[index]}]"

    def to_jsonl(self) -> bytes:
        """One record a line, so line i+1 of the written file is record i."""
        lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in self.records]
        return ("\n".join(lines) + "\n").encode()


@dataclass
class TrainingData:
    train: Dataset
    valid: Dataset | None = None

    def write(self, folder: Path) -> None:
        """Write `train.jsonl` (and `valid.jsonl`) where the training job reads them."""
        folder.mkdir(parents=True, exist_ok=True)
        for dataset, name in ((self.train, "train.jsonl"), (self.valid, "valid.jsonl")):
            path = folder / name
            if dataset is None:
                path.unlink(missing_ok=True)
                continue
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(dataset.to_jsonl())
            tmp.replace(path)


# --- one record -------------------------------------------------------------------------


def record_format(record: Any) -> Format:
    """The format of one record, with mlx-lm's precedence (completions, chat, text)."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {_kind(record)}")
    if "prompt" in record and "completion" in record:
        return "completions"
    if "messages" in record:
        return "chat"
    if "text" in record:
        return "text"
    if "prompt" in record or "completion" in record:
        missing = "completion" if "prompt" in record else "prompt"
        raise ValueError(f'missing field "{missing}" (a completions record has both)')
    keys = ", ".join(sorted(record)) or "none"
    raise ValueError(
        'unknown record format: expected "messages", "prompt" and "completion", or "text"'
        f" (keys: {keys})"
    )


def check_record(record: dict[str, Any], fmt: Format) -> int:
    """Raise ValueError naming what is wrong; return the bytes of text the record holds."""
    if fmt == "text":
        return _text(record, "text", allow_empty=False)
    if fmt == "completions":
        size = _text(record, "prompt", allow_empty=True)
        size += _text(record, "completion", allow_empty=False)
        _tools(record)
        return size
    messages = record["messages"]
    if not isinstance(messages, list):
        raise ValueError(f'"messages" must be an array, got {_kind(messages)}')
    if not messages:
        raise ValueError('"messages" is empty')
    size = sum(_message(m, i) for i, m in enumerate(messages))
    last = messages[-1]["role"]
    if last != "assistant":
        raise ValueError(
            f'the last message must be from the assistant (what the model learns), got "{last}"'
        )
    _tools(record)
    return size


def _message(message: Any, i: int) -> int:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be an object, got {_kind(message)}")
    if "role" not in message:
        raise ValueError(f'{where}: missing field "role"')
    role = message["role"]
    if not isinstance(role, str):
        raise ValueError(f"{where}.role must be a string, got {_kind(role)}")
    if role not in ROLES:
        raise ValueError(f'{where}.role must be one of {", ".join(ROLES)}, got "{role}"')
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if role != "assistant":
            raise ValueError(f"{where}: only assistant messages have tool_calls")
        if not isinstance(tool_calls, list) or not all(isinstance(c, dict) for c in tool_calls):
            raise ValueError(f"{where}.tool_calls must be an array of objects")
    if "content" not in message:
        if tool_calls:
            return 0
        raise ValueError(f'{where}: missing field "content"')
    content = message["content"]
    if content is None and tool_calls:
        return 0  # OpenAI's shape of a message that only calls tools
    if not isinstance(content, str):
        raise ValueError(f"{where}.content must be a string, got {_kind(content)}")
    return len(content.encode())


def _text(record: dict[str, Any], key: str, allow_empty: bool) -> int:
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string, got {_kind(value)}')
    if not value and not allow_empty:
        raise ValueError(f'"{key}" is empty')
    return len(value.encode())


def _tools(record: dict[str, Any]) -> None:
    tools = record.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise ValueError('"tools" must be an array of objects')


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "an array", dict: "an object"})
    return names.get(type(value), type(value).__name__)


# --- many records -----------------------------------------------------------------------


class _Builder:
    """Collects records of one split, enforcing one format and the record limit."""

    def __init__(self, name: str, by_line: bool, limits: Limits) -> None:
        self.name, self.by_line, self.limits = name, by_line, limits
        self.format: Format | None = None
        self.first = 0
        self.records: list[dict[str, Any]] = []
        self.positions: list[int] = []
        self.longest = 0

    def where(self, position: int) -> str:
        return f"{self.name} line {position}" if self.by_line else f"{self.name}[{position}]"

    def add(self, record: Any, position: int) -> None:
        try:
            fmt = record_format(record)
            if self.format is None:
                self.format, self.first = fmt, position
            elif fmt != self.format:
                raise ValueError(
                    f"{fmt} record in a {self.format} dataset (all records of a file must"
                    f" share one format; {self.where(self.first)} is {self.format})"
                )
            self.longest = max(self.longest, check_record(record, fmt))
        except ValueError as exc:
            raise DataError(f"{self.where(position)}: {exc}") from None
        if len(self.records) >= self.limits.records:
            raise DataError(f"{self.name} has more than {self.limits.records} records")
        self.records.append(record)
        self.positions.append(position)

    def finish(self, size: int) -> Dataset:
        if self.format is None:
            raise DataError(f"{self.name} is empty (no records)")
        return Dataset(
            self.name, self.format, self.records, self.positions, self.by_line, size, self.longest
        )


def parse_records(
    records: Sequence[Any], name: str = "train", limits: Limits = Limits()
) -> Dataset:
    """Check an inline list of records (a request's JSON array)."""
    if not isinstance(records, (list, tuple)):
        raise DataError(f"{name} must be an array of records, got {_kind(records)}")
    builder = _Builder(name, by_line=False, limits=limits)
    for i, record in enumerate(records):
        builder.add(record, i)
    # Inline records came as JSON already: their size is what writing them takes.
    return builder.finish(sum(len(json.dumps(r, ensure_ascii=False)) for r in builder.records))


def parse_jsonl(stream: BinaryIO, name: str, limits: Limits = Limits()) -> Dataset:
    """Check JSONL read from a binary stream; blank lines are skipped but keep numbering."""
    builder = _Builder(name, by_line=True, limits=limits)
    size = 0
    number = 0
    while True:
        # A bounded read: one absurd line costs at most line_bytes of memory.
        raw = stream.readline(limits.line_bytes + 1)
        if not raw:
            break
        number += 1
        size += len(raw)
        if size > limits.file_bytes:
            raise DataError(f"{name} is larger than {limits.file_bytes} bytes")
        if len(raw) > limits.line_bytes and not raw.endswith(b"\n"):
            raise DataError(f"{name} line {number}: longer than {limits.line_bytes} bytes")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark, as some editors write
        if not raw.strip():
            continue
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            reason = f"not UTF-8 ({exc.reason} at byte {exc.start})"
            raise DataError(f"{name} line {number}: {reason}") from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{name} line {number}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        except RecursionError:
            raise DataError(f"{name} line {number}: invalid JSON (nested too deeply)") from None
        builder.add(record, number)
    return builder.finish(size)


def parse_bytes(blob: bytes, name: str = "train.jsonl", limits: Limits = Limits()) -> Dataset:
    """Check an uploaded JSONL blob."""
    if len(blob) > limits.file_bytes:
        raise DataError(f"{name} is larger than {limits.file_bytes} bytes")
    return parse_jsonl(io.BytesIO(blob), name, limits)


def parse_file(path: Path, limits: Limits = Limits()) -> Dataset:
    """Check a JSONL file, named in messages by its file name."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.file_bytes:
            raise DataError(f"{path.name} is larger than {limits.file_bytes} bytes")
        with path.open("rb") as stream:
            return parse_jsonl(stream, path.name, limits)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a JSONL file") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def parse_folder(folder: Path, limits: Limits = Limits()) -> TrainingData:
    """Check a folder holding `train.jsonl` and optionally `valid.jsonl` (as mlx-lm reads)."""
    folder = Path(folder)
    if not (folder / "train.jsonl").is_file():
        raise DataError(f"{folder} has no train.jsonl")
    valid = folder / "valid.jsonl"
    return TrainingData(
        parse_file(folder / "train.jsonl", limits),
        parse_file(valid, limits) if valid.exists() else None,
    )


Source = Sequence[Any] | bytes | Path | str


def parse_source(source: Source, name: str, limits: Limits = Limits()) -> Dataset:
    """One split from any source: inline records, an upload's bytes or a file path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return parse_bytes(bytes(source), f"{name}.jsonl", limits)
    if isinstance(source, (str, Path)):
        return parse_file(Path(source), limits)
    return parse_records(source, name, limits)


def load_training_data(
    train: Source, valid: Source | None = None, limits: Limits = Limits()
) -> TrainingData:
    """Check a job's data. A folder as `train` holds both splits (`valid` must be None)."""
    if isinstance(train, (str, Path)) and Path(train).is_dir():
        if valid is not None:
            raise DataError("a data folder holds its own valid.jsonl; do not name another")
        return parse_folder(Path(train), limits)
    return TrainingData(
        parse_source(train, "train", limits),
        parse_source(valid, "valid", limits) if valid is not None else None,
    )
