"""Training data checks: every bad record is a 400 naming its line (or index) and the fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollmlx.finetune_data import (
    DataError,
    Limits,
    load_training_data,
    parse_bytes,
    parse_file,
    parse_folder,
    parse_records,
)

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
COMPLETION = {"prompt": "2+2=", "completion": "4"}
TEXT = {"text": "The cat runs."}


def jsonl(*records: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def error_of(blob: bytes, limits: Limits | None = None) -> DataError:
    with pytest.raises(DataError) as info:
        parse_bytes(blob, "train.jsonl", limits or Limits())
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize(
    ("record", "fmt"), [(CHAT, "chat"), (COMPLETION, "completions"), (TEXT, "text")]
)
def test_each_format_is_recognised(record, fmt):
    dataset = parse_bytes(jsonl(record, record))
    assert dataset.format == fmt
    assert dataset.records == [record, record]
    assert dataset.positions == [1, 2]


def test_chat_with_tools_and_tool_calls_is_accepted():
    record = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "w"}}]},
            {"role": "tool", "content": "sunny", "name": "w"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "w"}}],
    }
    assert parse_bytes(jsonl(record)).format == "chat"


def test_invalid_json_names_its_line_and_column():
    blob = jsonl(TEXT) + b'{"text": "a",}\n'
    assert str(error_of(blob)).startswith("train.jsonl line 2: invalid JSON (")
    assert "column 14" in str(error_of(blob))


def test_blank_lines_are_skipped_but_keep_line_numbers():
    blob = jsonl(TEXT) + b"\n   \n" + b'{"txt": 1}\n'
    message = str(error_of(blob))
    assert message.startswith("train.jsonl line 4: unknown record format")
    assert "(keys: txt)" in message


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"prompt": "x"}, 'missing field "completion" (a completions record has both)'),
        ({"completion": "x"}, 'missing field "prompt" (a completions record has both)'),
        ({"messages": "hi"}, '"messages" must be an array, got a string'),
        ({"messages": []}, '"messages" is empty'),
        ({"messages": [{"content": "x"}]}, 'messages[0]: missing field "role"'),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            'messages[0].role must be one of system, user, assistant, tool, got "bot"',
        ),
        ({"messages": [{"role": "assistant"}]}, 'messages[0]: missing field "content"'),
        (
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": ""}]},
            "messages[0].content must be a string, got a number",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
            'the last message must be from the assistant (what the model learns), got "user"',
        ),
        ({"text": ["a"]}, '"text" must be a string, got an array'),
        ({"text": ""}, '"text" is empty'),
        ({"prompt": "a", "completion": None}, '"completion" must be a string, got null'),
        ({**COMPLETION, "tools": {"a": 1}}, '"tools" must be an array of objects'),
        ([1, 2], "a record must be a JSON object, got an array"),
    ],
)
def test_a_bad_record_names_its_line_and_fault(record, expected):
    blob = jsonl(TEXT if "text" in str(record) else COMPLETION, record)
    if isinstance(record, dict) and "messages" in record:
        blob = jsonl(CHAT, record)
    assert str(error_of(blob)) == f"train.jsonl line 2: {expected}"


def test_mixed_formats_name_the_first_record_format():
    message = str(error_of(jsonl(CHAT, CHAT, TEXT)))
    assert message == (
        "train.jsonl line 3: text record in a chat dataset (all records of a file must"
        " share one format; train.jsonl line 1 is chat)"
    )


def test_an_empty_file_is_an_error():
    assert str(error_of(b"")) == "train.jsonl is empty (no records)"
    assert str(error_of(b"\n\n")) == "train.jsonl is empty (no records)"


def test_invalid_utf8_names_its_line():
    assert str(error_of(jsonl(TEXT) + b'{"text": "\xff"}\n')).startswith(
        "train.jsonl line 2: not UTF-8 (invalid start byte"
    )


def test_a_byte_order_mark_is_allowed():
    assert parse_bytes(b"\xef\xbb\xbf" + jsonl(TEXT)).records == [TEXT]


def test_an_absurd_line_is_an_error_not_a_memory_error():
    limits = Limits(line_bytes=100)
    long_line = json.dumps({"text": "x" * 200}).encode() + b"\n"
    assert str(error_of(jsonl(TEXT) + long_line, limits)) == (
        "train.jsonl line 2: longer than 100 bytes"
    )
    # Exactly at the limit (newline excluded) is fine.
    exact = json.dumps({"text": "y" * 88}).encode()
    assert len(exact) == 100
    assert len(parse_bytes(exact + b"\n", limits=limits)) == 1


def test_an_absurd_file_or_record_count_is_an_error(tmp_path: Path):
    blob = jsonl(*[TEXT] * 10)
    assert "larger than 50 bytes" in str(error_of(blob, Limits(file_bytes=50)))
    assert str(error_of(blob, Limits(records=3))) == "train.jsonl has more than 3 records"
    path = tmp_path / "big.jsonl"
    path.write_bytes(blob)
    with pytest.raises(DataError, match=r"big\.jsonl is larger than 50 bytes"):
        parse_file(path, Limits(file_bytes=50))


def test_deeply_nested_json_is_an_error():
    message = str(error_of(b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"))
    assert message.startswith("train.jsonl line 1: ")


def test_inline_records_are_named_by_index():
    dataset = parse_records([TEXT, TEXT], name="train")
    assert dataset.where(1) == "train[1]"
    with pytest.raises(DataError) as info:
        parse_records([COMPLETION, {"prompt": "a", "completion": 3}])
    assert str(info.value) == 'train[1]: "completion" must be a string, got a number'
    with pytest.raises(DataError, match="train must be an array of records, got an object"):
        parse_records({"text": "a"})  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"^train is empty \(no records\)$"):
        parse_records([])


def test_a_folder_holds_train_and_optional_valid(tmp_path: Path):
    (tmp_path / "train.jsonl").write_bytes(jsonl(TEXT, TEXT))
    data = parse_folder(tmp_path)
    assert len(data.train) == 2 and data.valid is None
    (tmp_path / "valid.jsonl").write_bytes(jsonl(CHAT) + b"{oops\n")
    with pytest.raises(DataError, match=r"^valid.jsonl line 2: invalid JSON"):
        parse_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"has no train\.jsonl"):
        parse_folder(empty)


def test_load_training_data_takes_every_source(tmp_path: Path):
    path = tmp_path / "mine.jsonl"
    path.write_bytes(jsonl(TEXT))
    data = load_training_data(path, jsonl(COMPLETION))
    assert data.train.name == "mine.jsonl" and data.train.format == "text"
    assert data.valid is not None and data.valid.name == "valid.jsonl"
    inline = load_training_data([CHAT], [CHAT])
    assert inline.train.where(0) == "train[0]" and inline.valid is not None
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(jsonl(TEXT))
    assert load_training_data(folder).train.records == [TEXT]
    with pytest.raises(DataError, match="does not exist"):
        load_training_data(tmp_path / "missing.jsonl")


def test_written_splits_number_records_by_line(tmp_path: Path):
    data = load_training_data([TEXT, {"text": "line\nbreak ✓"}], [COMPLETION])
    data.write(tmp_path)
    again = parse_folder(tmp_path)
    assert again.train.records == data.train.records
    assert again.train.positions == [1, 2]  # record i is line i+1 of the job's file
    assert again.valid is not None and again.valid.records == [COMPLETION]
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_longest_counts_text_bytes():
    dataset = parse_records([{"text": "ab"}, {"text": "é" * 10}])
    assert dataset.longest == 20
