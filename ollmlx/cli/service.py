"""`ollmlx service ...`: run `ollmlx serve` in the background, as launchd or systemd does it.

macOS: a launchd user agent (~/Library/LaunchAgents/<LABEL>.plist), loaded with
`launchctl bootstrap gui/<uid>` and unloaded with `launchctl bootout`.
Linux: a systemd user unit (~/.config/systemd/user/ollmlx.service).
Platform, home, uid and the command runner are parameters so that tests can check the
files and the exact argument lists without calling launchctl or systemctl.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

LABEL = "com.ollmlx.server"
UNIT = "ollmlx.service"
LOG_NAME = "server.log"

# (exit code, stdout + stderr) of one command.
CommandRunner = Callable[[Sequence[str]], tuple[int, str]]


class ServiceError(Exception):
    """A readable one-line error for the terminal."""


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    return done.returncode, (done.stdout + done.stderr).strip()


@dataclass
class Service:
    """Where the service's files live and how its manager is called, for one platform."""

    platform: str = sys.platform
    home: Path = field(default_factory=Path.home)
    uid: int = field(default_factory=lambda: os.getuid() if hasattr(os, "getuid") else 0)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    python: str = sys.executable
    run: CommandRunner = run_command

    def __post_init__(self) -> None:
        if self.platform not in ("darwin", "linux"):
            raise ServiceError(
                "ollmlx service supports macOS (launchd) and Linux (systemd); "
                f"this is {self.platform!r}: run `ollmlx serve` yourself"
            )

    @property
    def macos(self) -> bool:
        return self.platform == "darwin"

    @property
    def unit_path(self) -> Path:
        if self.macos:
            return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        return self.home / ".config" / "systemd" / "user" / UNIT

    @property
    def log_dir(self) -> Path:
        if self.macos:
            return self.home / "Library" / "Logs" / "ollmlx"
        return self.home / ".local" / "state" / "ollmlx"

    @property
    def log_path(self) -> Path:
        """The server's own rotating log (OLLMLX_LOG_FILE)."""
        return self.log_dir / LOG_NAME

    @property
    def stdio_path(self) -> Path:
        """launchd's stdout/stderr file: only what comes before logging starts (crashes)."""
        return self.log_dir / "launchd.log"

    @property
    def target(self) -> str:
        return f"gui/{self.uid}/{LABEL}"

    def program(self) -> list[str]:
        # The interpreter that runs this command: right for pipx, uv and venv installs alike.
        return [self.python, "-m", "ollmlx", "serve"]

    def environment(self) -> dict[str, str]:
        """The current OLLAMA_*/OLLMLX_* settings, and the log file the service writes."""
        env = {
            k: v for k, v in sorted(self.environ.items()) if k.startswith(("OLLAMA_", "OLLMLX_"))
        }
        env["OLLMLX_LOG_FILE"] = str(self.log_path)
        return env

    # The files.

    def plist(self) -> dict[str, Any]:
        return {
            "Label": LABEL,
            "ProgramArguments": self.program(),
            "EnvironmentVariables": self.environment(),
            "RunAtLoad": True,
            "KeepAlive": True,
            # Background agents get throttled CPU and I/O; inference is interactive work.
            "ProcessType": "Interactive",
            "WorkingDirectory": str(self.home),
            "StandardOutPath": str(self.stdio_path),
            "StandardErrorPath": str(self.stdio_path),
        }

    def unit(self) -> str:
        lines = [
            "[Unit]",
            "Description=ollmlx: Ollama's API on MLX",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={' '.join(_systemd_quote(a) for a in self.program())}",
            f"WorkingDirectory={_systemd_quote(str(self.home))}",
            *(f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in self.environment().items()),
            "Restart=on-failure",
            "RestartSec=3",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
        return "\n".join(lines)

    def write_unit(self) -> Path:
        self.unit_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.macos:
            self.unit_path.write_bytes(plistlib.dumps(self.plist()))
        else:
            self.unit_path.write_text(self.unit())
        return self.unit_path

    def installed_environment(self) -> dict[str, str]:
        """The environment written at install time (it decides the service's address)."""
        if not self.unit_path.exists():
            return {}
        if self.macos:
            with self.unit_path.open("rb") as f:
                return dict(plistlib.load(f).get("EnvironmentVariables", {}))
        return parse_unit_environment(self.unit_path.read_text())

    # The manager's commands.

    def _check(self, argv: list[str], ok: Sequence[int] = (0,)) -> str:
        code, output = self.run(argv)
        if code not in ok:
            raise ServiceError(f"{' '.join(argv[:2])} failed ({code}): {output or 'no output'}")
        return output

    def _require_installed(self) -> None:
        if not self.unit_path.exists():
            raise ServiceError("ollmlx service is not installed (run `ollmlx service install`)")

    def loaded(self) -> bool:
        if self.macos:
            return self.run(["launchctl", "print", self.target])[0] == 0
        return self.run(["systemctl", "--user", "is-active", "--quiet", UNIT])[0] == 0

    def install(self) -> str:
        if self.macos:
            # Replacing a loaded agent: launchd keeps the old definition until bootout.
            self.run(["launchctl", "bootout", self.target])
            self.write_unit()
            self._check(["launchctl", "bootstrap", f"gui/{self.uid}", str(self.unit_path)])
        else:
            self.write_unit()
            self._check(["systemctl", "--user", "daemon-reload"])
            self._check(["systemctl", "--user", "enable", "--now", UNIT])
        return f"installed and started {self.unit_path}"

    def uninstall(self) -> str:
        self._require_installed()
        if self.macos:
            self.run(["launchctl", "bootout", self.target])  # fails only when not loaded
            self.unit_path.unlink()
        else:
            self.run(["systemctl", "--user", "disable", "--now", UNIT])
            self.unit_path.unlink()
            self._check(["systemctl", "--user", "daemon-reload"])
        return f"removed {self.unit_path}"

    def start(self) -> str:
        self._require_installed()
        if not self.macos:
            self._check(["systemctl", "--user", "start", UNIT])
        elif self.loaded():
            self._check(["launchctl", "kickstart", self.target])
        else:
            self._check(["launchctl", "bootstrap", f"gui/{self.uid}", str(self.unit_path)])
        return "started"

    def stop(self) -> str:
        self._require_installed()
        if self.macos:
            # KeepAlive restarts a killed agent: unloading is the only real stop.
            if self.loaded():
                self._check(["launchctl", "bootout", self.target])
        else:
            self._check(["systemctl", "--user", "stop", UNIT])
        return "stopped"


def _systemd_quote(value: str) -> str:
    """One word for systemd's command-line and Environment= parsing."""
    value = value.replace("%", "%%")
    if value and not any(c in value for c in " \t\"\\$'"):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{escaped}"'


def parse_unit_environment(text: str) -> dict[str, str]:
    """KEY=value pairs from a unit's Environment= lines as _systemd_quote writes them."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("Environment="):
            continue
        value = line[len("Environment=") :]
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\").replace("$$", "$")
        key, _, val = value.replace("%%", "%").partition("=")
        env[key] = val
    return env


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a file (the whole file is small: it rotates at 10 MB)."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    return text.splitlines()[-lines:] if lines > 0 else []


def follow(
    path: Path, out: TextIO, stop: Callable[[], bool] = lambda: False, start: int | None = None
) -> None:
    """Print what is added from byte `start` (default: the end), across rotations, until
    Ctrl-C (or `stop()`)."""
    exists = path.exists()
    position = start if start is not None else (path.stat().st_size if exists else 0)
    inode = path.stat().st_ino if exists else None
    while not stop():
        if path.exists():
            info = path.stat()
            if info.st_ino != inode or info.st_size < position:  # rotated: read the new file
                inode, position = info.st_ino, 0
            if info.st_size > position:
                with path.open("r", errors="replace") as f:
                    f.seek(position)
                    out.write(f.read())
                    out.flush()
                    position = f.tell()
        time.sleep(0.25)  # like `tail -f`: a log is read by a person


def status(service: Service, out: TextIO) -> bool:
    """Print whether the service runs, its address and loaded models; True if it answers."""
    from ..config import ConfigError, load_settings
    from .client import Client, ClientError

    installed = service.unit_path.exists()
    state = ("loaded" if service.loaded() else "not loaded") if installed else "not installed"
    out.write(f"service:  {state} ({service.unit_path})\n")
    try:
        settings = load_settings(service.installed_environment() or service.environ)
    except ConfigError as exc:
        raise ServiceError(str(exc)) from None
    client = Client(settings)
    try:
        version = client.request("GET", "/api/version")["version"]
        models = client.request("GET", "/api/ps")["models"]
    except (ClientError, OSError):
        out.write(f"server:   not responding at {settings.base_url}\n")
        out.write(f"logs:     {service.log_path}\n")
        return False
    out.write(f"server:   running at {settings.base_url} (version {version})\n")
    names = ", ".join(m["name"] for m in models) or "none"
    out.write(f"models:   {names}\n")
    out.write(f"logs:     {service.log_path}\n")
    return True


def main(args: Any, service: Service | None = None, out: TextIO = sys.stdout) -> int:
    """`ollmlx service ACTION`; the exit code (status: 0 running, 3 not, like systemctl)."""
    service = service or Service()
    action = args.action
    if action == "status":
        return 0 if status(service, out) else 3
    if action == "logs":
        size = service.log_path.stat().st_size if service.log_path.exists() else 0
        for line in tail(service.log_path, args.lines):
            out.write(line + "\n")
        out.flush()
        if args.follow:
            try:
                follow(service.log_path, out, start=size)
            except KeyboardInterrupt:
                pass
        elif not service.log_path.exists():
            raise ServiceError(f"no log yet at {service.log_path}")
        return 0
    message = {
        "install": service.install,
        "uninstall": service.uninstall,
        "start": service.start,
        "stop": service.stop,
    }[action]()
    out.write(f"ollmlx service: {message}\n")
    if action in ("install", "start"):
        out.write(f"logs: {service.log_path} (ollmlx service logs -f)\n")
    return 0
