"""`ollmlx run`: the interactive chat driven in a pseudo-terminal, and the script mode.

pexpect gives the chat a real TTY (readline, echo, Ctrl-C as SIGINT from the terminal
driver), which subprocess pipes cannot; both talk to a real `ollmlx serve`.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from ollmlx.cli.gofmt import go_float32_list
from ollmlx.cli.terminal import WordWrapper, char_width
from tests.conftest import Server, wait_for
from tests.scriptedmodel import build_scripted_model

GREEDY = {"temperature": 0.0, "num_predict": 5}


def cli_env(server: Server, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "OLLMLX_"))}
    env.update(OLLAMA_HOST=server.host, HOME=str(home), TERM="dumb", PYTHONUNBUFFERED="1")
    return env


def run_cli(
    server: Server, home: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollmlx", "run", *args],
        env=cli_env(server, home),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def spawn(server: Server, tmp_path: Path) -> Iterator[object]:
    children: list[pexpect.spawn] = []

    def start(*args: str, columns: int = 200) -> pexpect.spawn:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "ollmlx", "run", *args],
            env=cli_env(server, tmp_path),
            encoding="utf-8",
            timeout=30,
            dimensions=(24, columns),
        )
        children.append(child)
        return child

    yield start
    for child in children:
        child.close(force=True)


def tty(text: str) -> str:
    """Text as a terminal shows it: the line discipline turns \\n into \\r\\n."""
    return text.replace("\n", "\r\n")


def test_interactive_chat_streams_answers_and_runs_commands(
    spawn: object, server: Server, tmp_path: Path
) -> None:
    child = spawn("tiny", "--nowordwrap")  # type: ignore[operator]
    child.expect_exact(">>> ")
    child.sendline("/set parameter temperature 0")
    child.expect_exact("Set parameter 'temperature' to '0'")
    child.sendline("/set parameter num_predict 5")
    child.expect_exact("Set parameter 'num_predict' to '5'")
    child.sendline("/set parameter num_predict lots")
    child.expect_exact("Couldn't set parameter: invalid integer value for parameter 'num_predict'")

    history = [{"role": "user", "content": "hello"}]
    with server.client() as client:
        first = client.chat(model="tiny", messages=history, options=GREEDY).message.content
    child.sendline("hello")
    child.expect_exact(tty(first) + "\r\n\r\n>>> ")

    child.sendline("/show info")
    child.expect(r"architecture\s+llama")
    child.expect_exact("Capabilities")
    child.sendline("/show parameters")
    child.expect(r"User defined parameters:\r\n  temperature\s+0.0\r\n  num_predict\s+5\r\n")
    child.sendline("/show license")
    child.expect_exact("No license was specified for this model.")

    # A multi-line message: the lines are joined with newlines, the history goes along.
    history += [
        {"role": "assistant", "content": first},
        {"role": "user", "content": "line one\nline two"},
    ]
    with server.client() as client:
        second = client.chat(model="tiny", messages=history, options=GREEDY).message.content
    child.sendline('"""line one')
    child.expect_exact("... ")
    child.sendline('line two"""')
    child.expect_exact(tty(second) + "\r\n\r\n>>> ")

    child.sendline("/set system You are terse.")
    child.expect_exact("Set system message.")
    child.sendline("/save tiny-saved")
    child.expect_exact("Created new model 'tiny-saved'")
    saved = httpx.post(f"{server.url}/api/show", json={"model": "tiny-saved"}).json()
    assert saved["system"] == "You are terse."
    assert "num_predict" in saved["parameters"]
    assert "line one" in saved["modelfile"]  # the session's messages

    child.sendline("/clear")
    child.expect_exact("Cleared session context")
    child.sendline("/nope")
    child.expect_exact("Unknown command '/nope'. Type /? for help")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # History persists for the next session (arrow keys).
    assert "/show info" in (tmp_path / ".ollmlx" / "history").read_text()


def test_ctrl_c_stops_the_answer_and_ctrl_d_leaves(spawn: object) -> None:
    child = spawn("tiny", "--nowordwrap")  # type: ignore[operator]
    child.expect_exact(">>> ")
    child.sendintr()  # at an empty prompt: a hint, not an exit
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.sendline("/set verbose")
    child.expect_exact("Set 'verbose' mode.")
    child.sendline("/set parameter num_predict 100000")
    child.expect_exact("Set parameter 'num_predict' to '100000'")
    child.sendline("go on")
    child.expect_exact("go on\r\n")
    child.expect(r"\S")  # the answer has started streaming
    child.sendintr()
    child.expect_exact(">>> ")
    # Stopped mid-answer: no metrics (they come only after a finished answer), no hint.
    assert "eval count" not in child.before
    assert "Use Ctrl + d" not in child.before

    child.sendline("/set parameter num_predict 3")
    child.expect_exact(">>> ")
    child.sendline("again")
    child.expect(r"eval count:\s+3 token\(s\)")
    child.expect_exact(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_missing_model_asks_before_pulling(spawn: object) -> None:
    child = spawn("no-such-model")  # type: ignore[operator]
    child.expect_exact("model 'no-such-model' not found. pull it? [y/N] ")
    child.sendline("n")
    child.expect_exact("Error: model 'no-such-model' not found")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


@pytest.fixture(scope="module")
def greedy(server: Server) -> str:
    with server.client() as client:
        client.create(model="tiny-run-greedy", from_="tiny", parameters=GREEDY)
    return "tiny-run-greedy"


def test_piped_stdin_prints_only_the_answer(server: Server, greedy: str, tmp_path: Path) -> None:
    with server.client() as client:
        expected = client.generate(model="tiny", prompt="from a pipe", options=GREEDY).response
    result = run_cli(server, tmp_path, greedy, stdin="from a pipe")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n\n"  # as `ollama run`: a blank line after it
    assert result.stderr == ""


def test_piped_stdin_goes_before_the_prompt_argument(
    server: Server, greedy: str, tmp_path: Path
) -> None:
    with server.client() as client:
        expected = client.generate(model="tiny", prompt="text\n summarise", options=GREEDY)
    result = run_cli(server, tmp_path, greedy, "summarise", stdin="text\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.response + "\n\n"


def test_verbose_prints_metrics_on_stderr(server: Server, greedy: str, tmp_path: Path) -> None:
    result = run_cli(server, tmp_path, greedy, "hello", "--verbose")
    assert result.returncode == 0, result.stderr
    labels = [line.split(":")[0] for line in result.stderr.splitlines()]
    assert labels == [
        "total duration",
        "load duration",
        "prompt eval count",
        "prompt eval duration",
        "prompt eval rate",
        "eval count",
        "eval duration",
        "eval rate",
    ]
    assert re.search(r"^eval count:\s+5 token\(s\)$", result.stderr, re.M)
    # Go's time.Duration text, as Ollama prints it with %v: "60.921ms", not "0.060921s".
    go = r"(\d+h)?(\d+m)?\d+(\.\d+)?(ns|µs|ms|s)"
    durations = [line for line in result.stderr.splitlines() if "duration" in line]
    assert len(durations) == 4
    assert all(re.fullmatch(rf"[a-z ]+duration: +{go}", line) for line in durations), durations


def test_format_json_and_keepalive_are_sent(server: Server, greedy: str, tmp_path: Path) -> None:
    with server.client() as client:
        client.copy(greedy, "tiny-run-short")
        expected = client.generate(
            model="tiny-run-short", prompt="hi", format="json", keep_alive=0
        ).response
    result = run_cli(
        server, tmp_path, "tiny-run-short", "hi", "--format", "json", "--keepalive", "0"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n\n"
    assert expected.lstrip().startswith("{")

    def unloaded() -> bool:
        with server.client() as client:
            return all(m.model != "tiny-run-short:latest" for m in client.ps().models)

    assert wait_for(unloaded, timeout=20)


def test_unknown_model_is_one_error_line(server: Server, tmp_path: Path) -> None:
    # Scripts pull a missing model without asking; this one cannot be pulled.
    result = run_cli(server, tmp_path, "no-such-model", "hi")
    assert result.returncode == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.endswith(errors[0] + "\n")
    assert "Traceback" not in result.stderr


def test_bad_think_value_is_refused(server: Server, tmp_path: Path) -> None:
    result = run_cli(server, tmp_path, "tiny", "hi", "--think=maybe")
    assert result.returncode == 1
    assert result.stderr == (
        'Error: invalid value for --think: "maybe" (must be true, false, high, medium, low, '
        "or max)\n"
    )


def render(output: str) -> list[str]:
    """Replay cursor-left and clear-to-end-of-line escapes into the lines a terminal shows."""
    lines, col = [[]], 0  # type: ignore[var-annotated]
    for token in re.split(r"(\x1b\[\d*D|\x1b\[K|\r|\n)", output):
        if token == "\n":
            lines.append([])
            col = 0
        elif token.startswith("\x1b[") and token.endswith("D"):
            col -= int(token[2:-1])
        elif token == "\r":
            col = 0
        elif token == "\x1b[K":
            del lines[-1][col:]
        else:
            for ch in token:
                line = lines[-1]
                line[col : col + 1] = [ch]
                col += 1
    return ["".join(line) for line in lines]


def test_word_wrap_moves_whole_words_to_the_next_line() -> None:
    text = "the quick brown fox jumps over the lazy dog " * 6
    out = io.StringIO()
    wrapper = WordWrapper(out, width=30)
    for i in range(0, len(text), 3):  # streamed in small chunks, as tokens come
        wrapper.write(text[i : i + 3])
    shown = render(out.getvalue())
    assert all(sum(char_width(c) for c in line) <= 25 for line in shown)
    assert " ".join(" ".join(shown).split()) == " ".join(text.split())
    # No word is cut: every shown word is a whole word of the text.
    assert set(" ".join(shown).split()) <= set(text.split())


def test_interactive_answers_wrap_at_the_terminal_width(spawn: object, server: Server) -> None:
    # A repeat penalty keeps the tiny model from looping on one endless word, so the
    # answer has words to wrap at.
    options = {"temperature": 0.0, "num_predict": 80, "repeat_penalty": 1.1}
    with server.client() as client:
        expected = client.chat(
            model="tiny", messages=[{"role": "user", "content": "hi"}], options=options
        ).message.content
    child = spawn("tiny", columns=80)  # type: ignore[operator]
    child.expect_exact(">>> ")
    child.sendline("/set parameter temperature 0")
    child.expect_exact(">>> ")
    child.sendline("/set parameter num_predict 80")
    child.expect_exact(">>> ")
    child.sendline("/set parameter repeat_penalty 1.1")
    child.expect_exact(">>> ")
    child.sendline("hi")
    child.expect_exact("hi\r\n")
    child.expect_exact("\r\n\r\n>>> ")
    shown = [line for line in render(child.before) if line.strip()]
    assert len(shown) > 1
    assert all(sum(char_width(c) for c in line) <= 75 for line in shown)
    assert " ".join(shown).split() == expected.split()
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_no_word_wrap_passes_text_through() -> None:
    out = io.StringIO()
    WordWrapper(out, width=0).write("a " * 100)
    assert out.getvalue() == "a " * 100


@pytest.fixture(scope="module")
def thinker(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    model_dir = build_scripted_model(tmp_path_factory.mktemp("scripted") / "thinker")
    with server.client() as client:
        client.create(model="thinker", from_=str(model_dir))
    return "thinker"


def test_thinking_is_printed_before_the_answer_in_ollamas_layout(
    server: Server, thinker: str, tmp_path: Path
) -> None:
    with server.client() as client:
        answer = client.generate(model=thinker, prompt="weather?", think=True)
    assert answer.thinking == "The user wants the weather."
    result = run_cli(server, tmp_path, thinker, "weather?", "--think")
    assert result.returncode == 0, result.stderr
    # cmd/cmd.go: "Thinking...", the thinking, a newline, "...done thinking." and a blank
    # line on stdout, then the answer; no colours when stdout is not a terminal.
    assert result.stdout == (
        f"Thinking...\n{answer.thinking}\n...done thinking.\n\n{answer.response}\n\n"
    )
    hidden = run_cli(server, tmp_path, thinker, "weather?", "--think", "--hidethinking")
    assert hidden.stdout == answer.response + "\n\n"
    maximal = run_cli(server, tmp_path, thinker, "weather?", "--think=max")
    assert maximal.stdout == result.stdout


def test_thinking_in_a_terminal_is_grey(spawn: object, thinker: str) -> None:
    child = spawn(thinker, "weather?", "--think")  # type: ignore[operator]
    child.expect(pexpect.EOF)
    output = child.before.replace("\r\n", "\n")
    assert "\x1b[38;5;245m\x1b[1mThinking...\n\x1b[0m\x1b[38;5;245m" in output
    assert "\x1b[38;5;245m\x1b[1m...done thinking.\n\n\x1b[0m" in output


def test_run_on_an_embedding_model_prints_the_vector(server: Server, tmp_path: Path) -> None:
    from tests.embed_reference import minilm_dir

    with server.client() as client:
        client.create(model="minilm-run", from_=str(minilm_dir()))
        expected = client.embed(model="minilm-run", input="the sky is blue").embeddings[0]
    result = run_cli(server, tmp_path, "minilm-run", "the sky is blue")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("]\n") and " " not in result.stdout
    assert result.stdout == go_float32_list(list(expected)) + "\n"
    assert json.loads(result.stdout) == pytest.approx(list(expected), rel=1e-6)
    short = run_cli(server, tmp_path, "minilm-run", "the sky is blue", "--dimensions", "4")
    assert len(json.loads(short.stdout)) == 4
    missing = run_cli(server, tmp_path, "minilm-run")
    assert missing.returncode == 1
    assert missing.stderr == (
        "Error: embedding models require input text. Usage: ollmlx run minilm-run "
        '"your text here"\n'
    )
