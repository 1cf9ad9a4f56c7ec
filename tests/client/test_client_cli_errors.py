"""Every `charlm` failure is one clear line on stderr and a non-zero exit status, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.charlm_client import PROMPT, CliRunner, assert_one_line_error

from client import Client


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
        if args[0] == "bench":  # the report names the failures and what the first said; the exit status says so
            assert proc.returncode == 1 and "UNAVAILABLE: 1 (first: " in proc.stdout and "Traceback" not in proc.stderr
            continue
        assert_one_line_error(proc, "cannot reach the server at 127.0.0.1:1", "UNAVAILABLE", "CHARLM_TARGET")


def test_deadline_exceeded(charlm: CliRunner, silent_target: str) -> None:
    proc = charlm("sessions", "list", "--timeout", "0.5", target=silent_target)
    assert_one_line_error(proc, "DEADLINE_EXCEEDED", "--timeout")


def test_local_errors(charlm: CliRunner, tmp_path: Path) -> None:
    assert_one_line_error(charlm("score", "missing-file.txt"), "missing-file.txt", "no such file")
    assert_one_line_error(charlm("health", "--ca", "missing-ca.pem"), "missing-ca.pem", "CA certificate")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(PROMPT.encode() + b" caf\xe9\n")
    assert_one_line_error(charlm("score", str(latin1)), "latin1.txt is not UTF-8 text")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for args in ((str(empty),), ("-",)):  # nothing at all; one character (it has no context to be scored on)
        assert_one_line_error(charlm("score", *args, stdin="T"), "nothing to score")
    assert_one_line_error(charlm("generate", "", "--target", ""), "target is empty")  # no gRPC log lines either


def test_out_of_range_options_are_named(charlm: CliRunner) -> None:
    for args, option in ((("-n", "-5"), "--max-chars"), (("--seed", "-1"), "--seed"), (("--top-k", "-1"), "--top-k")):
        assert_one_line_error(charlm("generate", PROMPT, *args), "INVALID_ARGUMENT", option)
    assert_one_line_error(charlm("sessions", "create", "--ttl", "-1"), "ttl_seconds", "--ttl")


def test_health_of_an_unknown_service(charlm: CliRunner) -> None:
    line = assert_one_line_error(charlm("health", "--service", "bogus", "--request-id", "probe-3"), "'bogus'",
                                 "charlm.v1.TextGeneration", "SERVICE_NOT_FOUND", "--service", "request id probe-3")
    assert "RpcError" not in line and "model" not in line and "session" not in line


def test_busy_session_hint_does_not_suggest_a_fork(charlm: CliRunner, client: Client) -> None:
    with client.create_session(prime=PROMPT) as s, s.generate(max_chars=60000) as long:
        next(iter(long))  # the stream holds the session
        line = assert_one_line_error(charlm("generate", "--session", s.id, "-n", "5"), "SESSION_BUSY")
    assert "fork" not in line and "wait" in line


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
    for args, message in ((("bench", "-c", "0"), "-c/--streams: must be at least 1, got 0"),
                          (("score", "-", "--chunk-size", "0"), "--chunk-size: must be at least 1, got 0"),
                          (("chat", "-n", "0"), "-n/--max-chars: must be at least 1, got 0"),
                          (("chat", "-t", "50"), "-t/--temperature: must be in [0, 10], got 50")):
        proc = charlm(*args, stdin="")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
