"""Every `charlm` failure is one clear line on stderr and a non-zero exit status, never a traceback."""

from __future__ import annotations

import socket

import pytest
from fixtures.charlm_client import PROMPT, CliRunner, assert_one_line_error


def test_unknown_model(charlm: CliRunner) -> None:
    line = assert_one_line_error(charlm("generate", PROMPT, "-m", "no-such-model"), "NOT_FOUND", "MODEL_NOT_FOUND")
    assert "charlm generate:" in line and "charlm models" in line
    assert_one_line_error(charlm("models", "no-such-model"), "MODEL_NOT_FOUND")


def test_bad_sampling_parameters(charlm: CliRunner) -> None:
    assert_one_line_error(charlm("generate", PROMPT, "-t", "50"), "INVALID_ARGUMENT", "temperature", "--help")
    assert_one_line_error(charlm("generate", PROMPT, "--top-p", "2"), "INVALID_ARGUMENT", "top_p")
    assert_one_line_error(charlm("generate", "\u00a7", "-n", "5"), "INVALID_ARGUMENT", "vocabulary")


def test_unknown_session(charlm: CliRunner) -> None:
    for args in (("generate", "--session", "nope", "-n", "5"), ("sessions", "show", "nope"),
                 ("sessions", "fork", "nope"), ("sessions", "delete", "nope"), ("score", "-", "--session", "nope")):
        line = assert_one_line_error(charlm(*args, stdin="text"), "NOT_FOUND", "SESSION_NOT_FOUND")
        assert "charlm sessions" in line


def test_server_down(charlm: CliRunner) -> None:
    for args in (("health",), ("generate", PROMPT), ("models",), ("bench", "-c", "1", "-n", "5", "--no-progress")):
        proc = charlm(*args, target="127.0.0.1:1")
        if args[0] == "bench":  # the report names the failures; the exit status says so
            assert proc.returncode == 1 and "UNAVAILABLE: 1" in proc.stdout and "Traceback" not in proc.stderr
            continue
        assert_one_line_error(proc, "cannot reach the server at 127.0.0.1:1", "UNAVAILABLE", "CHARLM_TARGET")


def test_deadline_exceeded(charlm: CliRunner) -> None:
    with socket.socket() as silent:  # accepts TCP connections, never speaks HTTP/2: every call waits
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = charlm("sessions", "list", "--timeout", "0.5", target=target)
    assert_one_line_error(proc, "DEADLINE_EXCEEDED", "--timeout")


def test_local_errors(charlm: CliRunner) -> None:
    assert_one_line_error(charlm("score", "missing-file.txt"), "missing-file.txt", "no such file")
    assert_one_line_error(charlm("health", "--ca", "missing-ca.pem"), "missing-ca.pem", "CA certificate")


@pytest.mark.parametrize("command", [
    [], ["generate"], ["chat"], ["sessions"], ["sessions", "list"], ["sessions", "show"], ["sessions", "create"],
    ["sessions", "fork"], ["sessions", "delete"], ["models"], ["health"], ["score"], ["bench"],
])
def test_help_everywhere_with_an_example(charlm: CliRunner, command: list[str]) -> None:
    proc = charlm(*command, "--help")
    assert proc.returncode == 0 and "example:" in proc.stdout and "charlm" in proc.stdout


def test_usage_error_exits_2(charlm: CliRunner) -> None:
    proc = charlm("generate", "-n", "many")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "invalid int value" in proc.stderr
    proc = charlm("bench", "-c", "0")
    assert proc.returncode == 2 and "-c/--streams: must be at least 1, got 0" in proc.stderr
