"""`ollmlx service`: the launchd plist and systemd unit it writes, and the commands it runs.

launchctl and systemctl are not called: a recording runner stands in for them (the one
fake here; there is no launchd on Linux). `status` and `logs` run against real files and
a real server, through the real CLI where the platform allows.
"""

from __future__ import annotations

import io
import os
import plistlib
import shlex
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from ollmlx.cli.service import LABEL, Service, ServiceError, follow, parse_unit_environment
from tests.conftest import Server, free_port, wait_for

PYTHON = "/opt/My Tools/bin/python3"  # a space, as in macOS's "Application Support"
ENV = {
    "OLLAMA_HOST": "127.0.0.1:11500",
    "OLLAMA_KEEP_ALIVE": "30m",
    "OLLMLX_MODELS": "/Users/me/models dir",
    "OLLAMA_ORIGINS": 'https://a.example,"quoted" 100%',
    "PATH": "/usr/bin",
    "HOME": "/Users/me",
}


class Recorder:
    """Records each argument list; answers with a chosen exit code per command prefix."""

    def __init__(self, codes: dict[str, int] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.codes = codes or {}

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        joined = " ".join(argv)
        for prefix, code in self.codes.items():
            if joined.startswith(prefix):
                return code, f"{prefix}: exit {code}"
        return 0, ""


def make(platform: str, home: Path, run: Recorder) -> Service:
    return Service(platform=platform, home=home, uid=501, environ=ENV, python=PYTHON, run=run)


def expected_env(log: Path) -> dict[str, str]:
    env = {k: v for k, v in ENV.items() if k.startswith(("OLLAMA_", "OLLMLX_"))}
    return {**env, "OLLMLX_LOG_FILE": str(log)}


def test_launchd_plist_holds_program_environment_and_logs(tmp_path: Path) -> None:
    service = make("darwin", tmp_path, Recorder())
    path = service.write_unit()
    assert path == tmp_path / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    with path.open("rb") as f:
        plist = plistlib.load(f)
    logs = tmp_path / "Library" / "Logs" / "ollmlx"
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [PYTHON, "-m", "ollmlx", "serve"]
    assert plist["EnvironmentVariables"] == expected_env(logs / "server.log")
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] is True
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(logs / "launchd.log")
    assert logs.is_dir()
    assert service.installed_environment() == expected_env(logs / "server.log")


def test_launchctl_argument_lists(tmp_path: Path) -> None:
    plist = str(tmp_path / "Library" / "LaunchAgents" / f"{LABEL}.plist")
    target = f"gui/501/{LABEL}"
    run = Recorder()
    service = make("darwin", tmp_path, run)
    service.install()
    assert run.calls == [
        ["launchctl", "bootout", target],  # replaces an older definition, if loaded
        ["launchctl", "bootstrap", "gui/501", plist],
    ]
    run.calls.clear()
    service.start()  # loaded (print answers 0): restart it in place
    service.stop()
    assert run.calls == [
        ["launchctl", "print", target],
        ["launchctl", "kickstart", target],
        ["launchctl", "print", target],
        ["launchctl", "bootout", target],
    ]
    run.calls.clear()
    run.codes = {"launchctl print": 113}  # not loaded
    service.start()
    service.stop()  # nothing to unload
    assert run.calls == [
        ["launchctl", "print", target],
        ["launchctl", "bootstrap", "gui/501", plist],
        ["launchctl", "print", target],
    ]
    run.calls.clear()
    service.uninstall()
    assert run.calls == [["launchctl", "bootout", target]]
    assert not Path(plist).exists()


def test_launchctl_failure_is_a_readable_error(tmp_path: Path) -> None:
    service = make("darwin", tmp_path, Recorder({"launchctl bootstrap": 5}))
    with pytest.raises(ServiceError, match=r"^launchctl bootstrap failed \(5\): "):
        service.install()


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd's INI dialect: sections of KEY=VALUE lines, keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections[current] = []
        elif line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            sections[current].append((key, value))
    return sections


def test_systemd_unit_holds_program_environment_and_restart(tmp_path: Path) -> None:
    service = make("linux", tmp_path, Recorder())
    path = service.write_unit()
    assert path == tmp_path / ".config" / "systemd" / "user" / "ollmlx.service"
    unit = parse_unit(path.read_text())
    svc = dict(unit["Service"])
    # systemd's quoting of ExecStart is shell-like for these values (no % or $ in them).
    assert shlex.split(svc["ExecStart"]) == [PYTHON, "-m", "ollmlx", "serve"]
    assert svc["Restart"] == "on-failure"
    assert dict(unit["Install"]) == {"WantedBy": "default.target"}
    lines = [value for key, value in unit["Service"] if key == "Environment"]
    log = tmp_path / ".local" / "state" / "ollmlx" / "server.log"
    assert len(lines) == len(expected_env(log))
    assert parse_unit_environment(path.read_text()) == expected_env(log)
    # % is systemd's specifier character: written doubled, so the service sees one.
    assert any("100%%" in line for line in lines)


def test_systemctl_argument_lists(tmp_path: Path) -> None:
    run = Recorder()
    service = make("linux", tmp_path, run)
    service.install()
    service.start()
    service.stop()
    assert service.loaded()
    service.uninstall()
    user = ["systemctl", "--user"]
    assert run.calls == [
        [*user, "daemon-reload"],
        [*user, "enable", "--now", "ollmlx.service"],
        [*user, "start", "ollmlx.service"],
        [*user, "stop", "ollmlx.service"],
        [*user, "is-active", "--quiet", "ollmlx.service"],
        [*user, "disable", "--now", "ollmlx.service"],
        [*user, "daemon-reload"],
    ]
    assert not service.unit_path.exists()


def test_commands_need_an_installed_service_and_a_known_platform(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match=r"not installed \(run `ollmlx service install`\)"):
        make("linux", tmp_path, Recorder()).start()
    with pytest.raises(ServiceError, match="supports macOS"):
        make("win32", tmp_path, Recorder())


def service_cli(home: Path, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "OLLMLX_"))}
    return subprocess.run(
        [sys.executable, "-m", "ollmlx", "service", *args],
        env={**env, "HOME": str(home), "OLLAMA_HOST": host},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_reports_address_and_loaded_models(server: Server, tmp_path: Path) -> None:
    with server.client() as client:
        client.generate(model="tiny", prompt="")  # load it
    # Installed with the server's address: status asks the address the service was given.
    service = Service(
        platform="linux", home=tmp_path, environ={"OLLAMA_HOST": server.host}, run=Recorder()
    )
    service.write_unit()
    out = io.StringIO()
    from ollmlx.cli.service import status

    assert status(service, out)
    text = out.getvalue()
    assert f"service:  loaded ({service.unit_path})" in text
    assert f"server:   running at {server.url}" in text
    assert "models:   tiny:latest" in text

    # The real CLI, for a service that is not installed, asks the current OLLAMA_HOST.
    result = service_cli(tmp_path / "other-home", server.host, "status")
    assert result.returncode == 0, result.stderr
    assert "service:  not installed" in result.stdout
    assert f"server:   running at {server.url}" in result.stdout
    down = service_cli(tmp_path / "other-home", f"127.0.0.1:{free_port()}", "status")
    assert down.returncode == 3
    assert "server:   not responding at http://127.0.0.1:" in down.stdout


@pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="service platforms only")
def test_logs_prints_the_tail_of_the_server_log(tmp_path: Path) -> None:
    log = Service(home=tmp_path).log_path
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    result = service_cli(tmp_path, "127.0.0.1:1", "logs", "-n", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line 7\nline 8\nline 9\n"
    empty = service_cli(tmp_path / "nobody", "127.0.0.1:1", "logs")
    assert empty.returncode == 1
    assert empty.stderr.startswith("Error: no log yet at ")


def test_follow_prints_new_lines_across_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("old\n")
    out, done = io.StringIO(), threading.Event()
    thread = threading.Thread(target=follow, args=(log, out, done.is_set, len("old\n")))
    thread.start()
    try:
        with log.open("a") as f:
            f.write("first\n")
        assert wait_for(lambda: "first\n" in out.getvalue())
        log.rename(tmp_path / "server.log.1")  # what RotatingFileHandler does
        log.write_text("after rotation\n")
        assert wait_for(lambda: "after rotation\n" in out.getvalue())
    finally:
        done.set()
        thread.join()
    assert out.getvalue() == "first\nafter rotation\n"
