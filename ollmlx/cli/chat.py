"""The interactive `ollmlx run MODEL` chat: Ollama's prompt, commands and key bindings."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StatusError
from ..options import MODEL_PARAMETERS, parse_parameter
from .client import Client, ClientError
from .manage import cmd_show
from .run import base_request, ensure_model, print_metrics, stream_answer
from .terminal import Spinner, WordWrapper

HISTORY = Path("~/.ollmlx/history")

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

PARAMETER_HELP = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Up/Down             Walk through the history
  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit ollmlx (/bye)
"""


@dataclass
class Session:
    """What the chat sends with each message, changed by the /set commands."""

    request: dict[str, Any]
    width: int
    verbose: bool = False
    hidethinking: bool = False
    history: bool = True
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.request["model"])


class Prompt:
    """input() with readline editing and history kept in ~/.ollmlx/history."""

    def __init__(self) -> None:
        self.path = HISTORY.expanduser()
        self.readline: Any = None
        with contextlib.suppress(ImportError):
            import readline  # arrow keys and history for input(); libedit on macOS

            self.readline = readline
            readline.set_history_length(1000)
            with contextlib.suppress(OSError):
                readline.read_history_file(self.path)

    def read(self, prompt: str, remember: bool) -> str:
        line = input(prompt)
        if self.readline is not None and remember and line.strip():
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.readline.write_history_file(self.path)
        elif self.readline is not None and line.strip():
            self.readline.remove_history_item(self.readline.get_current_history_length() - 1)
        return line

    def message(self, remember: bool) -> str | None:
        """One message; a line starting with \"\"\" goes on until one ending with \"\"\".

        None at Ctrl-D. Ctrl-C in the middle of a multi-line message drops it.
        """
        try:
            line = self.read(">>> ", remember)
        except EOFError:
            return None
        head = line.split(None, 2)
        prefix = " ".join(head[:2]) + " " if line.startswith("/set system ") else ""
        body = line[len(prefix) :]
        if not body.startswith('"""'):
            return line
        parts = [body[3:]]
        while not (parts[-1].endswith('"""') and (len(parts) > 1 or len(parts[0]) >= 3)):
            try:
                parts.append(self.read("... ", remember))
            except EOFError:
                return None
        parts[-1] = parts[-1][:-3]
        return prefix + "\n".join(parts).strip("\n")


def load(client: Client, session: Session) -> None:
    """Load the model (a spinner on a TTY) so the first answer does not wait for it."""
    with Spinner():
        client.request("POST", "/api/chat", {**session.request, "messages": [], "stream": False})


def answer(client: Client, session: Session, text: str) -> None:
    """Stream one answer; Ctrl-C stops it and the turn is forgotten, as in Ollama."""
    system = [{"role": "system", "content": session.system}] if session.system else []
    messages = [*session.messages, {"role": "user", "content": text}]
    request = {**session.request, "messages": system + messages, "options": session.options}
    out = WordWrapper(sys.stdout, session.width)
    reply: list[str] = []
    final: dict[str, Any] = {}
    try:
        for part in stream_answer(client, "/api/chat", request, out, not session.hidethinking):
            reply.append(part.get("message", {}).get("content", ""))
            final = part
    except KeyboardInterrupt:
        print("\n")
        return
    print("\n")
    session.messages = [*messages, {"role": "assistant", "content": "".join(reply)}]
    if session.verbose:
        print_metrics(final)


def set_command(session: Session, text: str) -> None:
    words = text.split()
    what = words[1] if len(words) > 1 else ""
    if what == "parameter":
        if len(words) < 4:
            print(PARAMETER_HELP)
            return
        name = words[2]
        if name in MODEL_PARAMETERS:
            print(f"Couldn't set parameter: {name} is a model setting: set it in a Modelfile")
            return
        try:
            # stop takes every word; other parameters one typed value (Modelfile rules).
            parsed = parse_parameter(name, words[3])
            session.options[name] = words[3:] if name == "stop" else parsed
        except StatusError as exc:
            print(f"Couldn't set parameter: {exc}")
            return
        print(f"Set parameter '{name}' to '{', '.join(words[3:])}'")
    elif what == "system":
        session.system = text.split(None, 2)[2] if len(words) > 2 else None
        print("Set system message." if session.system else "Cleared system message.")
    elif what in ("verbose", "quiet"):
        session.verbose = what == "verbose"
        print(f"Set '{what}' mode.")
    elif what in ("wordwrap", "nowordwrap"):
        session.width = shutil.get_terminal_size().columns if what == "wordwrap" else 0
        print(f"Set '{what}' mode.")
    elif what in ("history", "nohistory"):
        session.history = what == "history"
        print(f"Set '{what}' mode.")
    elif what == "format" and len(words) > 2:
        session.request["format"] = words[2]
        print(f"Set format to '{words[2]}' mode.")
    elif what == "noformat":
        session.request.pop("format", None)
        print("Disabled format.")
    elif what in ("think", "nothink"):
        level = words[2] if what == "think" and len(words) > 2 else None
        session.request["think"] = level or what == "think"
        print(f"Set '{what}' mode." if not level else f"Set 'think' mode to '{level}'.")
    else:
        print(SET_HELP)


def show_command(client: Client, session: Session, words: list[str]) -> None:
    what = words[1] if len(words) > 1 else ""
    if what == "info":
        flags = dict.fromkeys(("modelfile", "template", "system", "parameters", "license"), False)
        cmd_show(client, argparse.Namespace(model=session.model, **flags))
        return
    if what not in ("license", "modelfile", "parameters", "system", "template"):
        print(SHOW_HELP)
        return
    info = client.request("POST", "/api/show", {"model": session.model})
    if what == "parameters":
        print("Model defined parameters:")
        lines = (info.get("parameters") or "").splitlines()
        for line in lines or ["No additional parameters were specified for this model."]:
            print(f"  {line}")
        print()
        if session.options:
            print("User defined parameters:")
            for key, value in session.options.items():
                print(f"  {key:<30} {value}")
            print()
        return
    missing = {
        "license": "No license was specified for this model.",
        "modelfile": "No Modelfile was found for this model.",
        "system": "No system message was specified for this model.",
        "template": "No prompt template was specified for this model.",
    }
    value = session.system if what == "system" and session.system else info.get(what)
    print(value or missing[what])


def save_command(client: Client, session: Session, name: str) -> None:
    """A new model from this one, with the session's system, parameters and messages."""
    request: dict[str, Any] = {"model": name, "from": session.model, "stream": False}
    if session.system:
        request["system"] = session.system
    if session.options:
        request["parameters"] = session.options
    if session.messages:
        request["messages"] = session.messages
    client.request("POST", "/api/create", request)
    print(f"Created new model '{name}'")


def handle(client: Client, session: Session, text: str) -> bool:
    """Run one command or send one message; False when the chat should end."""
    words = text.split()
    command = words[0]
    if command in ("/bye", "/exit"):
        return False
    if command in ("/?", "/help"):
        topic = words[1] if len(words) > 1 else ""
        topics = {"set": SET_HELP, "show": SHOW_HELP, "shortcuts": SHORTCUTS, "shortcut": SHORTCUTS}
        print(topics.get(topic, HELP))
    elif command == "/set":
        set_command(session, text)
    elif command == "/show":
        show_command(client, session, words)
    elif command == "/clear":
        session.messages = []
        print("Cleared session context")
    elif command == "/load" and len(words) == 2:
        ensure_model(client, words[1], ask=True)
        print(f"Loading model '{words[1]}'")
        session.request["model"] = words[1]
        session.messages = []
        load(client, session)
    elif command == "/save" and len(words) == 2:
        save_command(client, session, words[1])
    elif command in ("/load", "/save"):
        print(f"Usage:\n  {command} <modelname>")
    elif command.startswith("/"):
        print(f"Unknown command '{command}'. Type /? for help")
    else:
        answer(client, session, text)
    return True


def chat(client: Client, args: argparse.Namespace, width: int) -> None:
    session = Session(base_request(args), width, args.verbose, args.hidethinking)
    load(client, session)
    prompt = Prompt()
    while True:
        try:
            text = prompt.message(session.history)
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        if text is None:
            print()
            return
        if not text.strip():
            continue
        try:
            if not handle(client, session, text.strip() if text.startswith("/") else text):
                return
        except ClientError as exc:
            # A bad command or a failed answer is reported; the chat goes on.
            print(f"Error: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print()
