"""Logs: the access log of a real server, JSON mode writing only JSON lines, and what a failed start says."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from fixtures.server import generate, start_server

from service.logs import JsonFormatter

REPO = Path(__file__).resolve().parents[2]


def access_lines(caplog: pytest.LogCaptureFixture) -> dict[tuple[str, str], logging.LogRecord]:
    """The access log's records by (rpc, code)."""
    return {(r.rpc, r.code): r for r in caplog.records if r.name == "service.access"}  # type: ignore[attr-defined]


async def test_access_log_has_a_line_per_finished_rpc(server_factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    srv = server_factory(access_log=True)
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        session = await stub.CreateSession(pb.CreateSessionRequest(prime="The "))
        await generate(stub, session_id=session.id, prompt="keeper", max_chars=30)
        with pytest.raises(grpc.aio.AioRpcError):
            await generate(stub, prompt="The ", max_chars=0)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetSession(pb.GetSessionRequest(session_id="f" * 32))
    lines = access_lines(caplog)
    assert set(lines) == {("CreateSession", "OK"), ("Generate", "OK"), ("Generate", "INVALID_ARGUMENT"),
                          ("GetSession", "NOT_FOUND")}
    ok = json.loads(JsonFormatter().format(lines["Generate", "OK"]))
    assert ok["logger"] == "service.access" and ok["msg"].startswith("Generate OK ") and ok["ms"] > 0
    assert (ok["model"], ok["session"], ok["chars_consumed"], ok["chars_generated"]) == (
        "tiny-lstm:1", session.id[:8], 6, 30)
    created = lines["CreateSession", "OK"]
    assert (created.model, created.session, created.chars_consumed) == (  # type: ignore[attr-defined]
        "tiny-lstm:1", session.id[:8], 4)
    invalid = json.loads(JsonFormatter().format(lines["Generate", "INVALID_ARGUMENT"]))
    assert "max_chars: must be in [1," in invalid["error"] and "session" not in invalid
    gone = lines["GetSession", "NOT_FOUND"]
    assert gone.session == "ffffffff" and "does not exist" in gone.error  # type: ignore[attr-defined]
    assert session.id not in caplog.text and "f" * 32 not in caplog.text  # ids are bearer capabilities


# The server's entry point with a warning while it starts (once logging is set up), as a library might warn.
_WARN_THEN_MAIN = """
import sys, warnings
from service import cli

def warn_then_skip(arenas: int) -> bool:
    warnings.warn("a warning while starting", UserWarning)
    return False

cli.limit_malloc_arenas = warn_then_skip
sys.exit(cli.main())
"""


def test_json_mode_writes_only_json_lines_for_a_warning_and_a_failed_start(tmp_path: Path) -> None:
    env = {**os.environ, "CHARLM_LOG_FORMAT": "json", "CHARLM_METRICS_PORT": "-1"}
    out = subprocess.run([sys.executable, "-c", _WARN_THEN_MAIN, "--model-repo", str(tmp_path / "missing"),
                          "--port", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # each one JSON, or this fails
    assert any(ln["level"] == "warning" and "a warning while starting" in ln["msg"] for ln in lines), lines
    assert lines[-1]["level"] == "error" and lines[-1]["msg"].startswith("start failed: ")
    assert "no loadable model" in lines[-1]["error"]
    assert not [ln for ln in lines if ln["msg"] == "stopped" or ln["msg"].startswith("draining")]


def test_a_failed_start_logs_neither_a_drain_nor_a_stop(model_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.server")
    with socket.socket() as busy:  # the models load, then the port cannot be bound
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError, match="cannot listen"):
            start_server(model_repo, port=busy.getsockname()[1])
    said = [r.getMessage() for r in caplog.records if r.name == "service.server"]
    assert not [m for m in said if m == "stopped" or m.startswith("draining")], said


def serve_command_line(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGV` with only ``env``'s CHARLM_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_")}
    return subprocess.run([sys.executable, "-m", "service", *argv], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("argv", "env", "error"), [
    (["--log-format", "json", "--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    (["--port", "abc"], {"CHARLM_LOG_FORMAT": "JSON"}, "argument --port: invalid int value: 'abc'"),
    (["--log-form=json", "--max-streams", "0"], {}, "--max-streams: max_streams: must be"),
    (["--log-format", "json"], {"CHARLM_PORT": "abc"}, "CHARLM_PORT='abc': invalid literal for int()"),
])
def test_json_mode_reports_a_bad_command_line_as_one_json_line(argv: list[str], env: dict[str, str],
                                                               error: str) -> None:
    out = serve_command_line(*argv, **env)
    assert out.returncode == 2 and out.stdout == ""
    [line] = [json.loads(ln) for ln in out.stderr.splitlines()]
    assert (line["level"], line["logger"], line["exit_status"]) == ("error", "service.cli", 2)
    assert line["error"].startswith(error) and line["msg"] == f"charlm-serve: error: {line['error']}"


@pytest.mark.parametrize(("argv", "env", "error"), [
    (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    (["--log-format", "xml"], {}, "argument --log-format: invalid choice: 'xml' (choose from 'logfmt', 'json')"),
    (["--log-format"], {"CHARLM_LOG_FORMAT": "json"}, "argument --log-format: expected one argument"),
])
def test_a_bad_command_line_is_plain_text_unless_the_format_is_known_to_be_json(
        argv: list[str], env: dict[str, str], error: str) -> None:
    out = serve_command_line(*argv, **env)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", f"charlm-serve: error: {error}\n")
