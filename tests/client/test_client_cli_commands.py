"""The `charlm` CLI as a subprocess against the real server: generate, sessions, models, health, score, bench."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from fixtures.charlm_client import PROMPT, REPO, CliRunner, cli_command, cli_env
from fixtures.server import RunningServer

from client import Client
from service.config import Limits


def test_generate_output_streams_before_the_process_ends(server_factory: Callable[..., RunningServer]) -> None:
    # a generation far longer than any stall of a busy test machine (tens of seconds for the tiny model)
    server = server_factory(limits=Limits(max_chars=5_000_000))
    proc = subprocess.Popen(cli_command("generate", PROMPT, "-n", "5000000", "--no-echo"), env=cli_env(server.target),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        received = b""
        deadline = time.monotonic() + 30
        while len(received) < 20 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                received += os.read(proc.stdout.fileno(), 4096)
        assert len(received) >= 20 and proc.poll() is None  # text is here, the generation is still going
        proc.send_signal(signal.SIGINT)  # Ctrl-C: quiet exit
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and b"Traceback" not in err


def test_generate_text_is_reproducible_and_echoes_the_prompt(charlm: CliRunner) -> None:
    first = charlm("generate", PROMPT, "-n", "50", "--seed", "1", "-t", "0.8", "--top-k", "20", "-v")
    second = charlm("generate", PROMPT, "-n", "50", "--seed", "1", "-t", "0.8", "--top-k", "20")
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith(PROMPT)
    assert len(first.stdout.rstrip("\n")) >= len(PROMPT) + 49
    assert "[length: 50 chars" in first.stderr


def test_generate_json_events(charlm: CliRunner) -> None:
    proc = charlm("generate", PROMPT, "-n", "40", "--seed", "2", "--json", "--logprobs", "-m", "tiny-rnn")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    chunks, finish = events[:-1], events[-1]
    assert all(e["event"] == "chunk" for e in chunks) and finish["event"] == "finish"
    assert sum(len(e["text"]) for e in chunks) == 40 == finish["generated_chars"]
    assert all(len(e["logprobs"]) == len(e["text"]) for e in chunks)
    assert finish["reason"] == "length" and finish["model"] == "tiny-rnn:1" and finish["seed"] == 2


def test_session_commands(charlm: CliRunner, client: Client) -> None:
    created = charlm("sessions", "create", "--prime", PROMPT, "-m", "tiny-gru")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip()
    out = charlm("generate", "--session", sid, "-n", "20", "--no-echo", "--seed", "3")
    assert out.returncode == 0 and len(out.stdout.rstrip("\n")) >= 19, out.stderr
    shown = json.loads(charlm("sessions", "show", sid, "--json").stdout)
    assert shown["chars_consumed"] == len(PROMPT) + 20 and shown["model"] == "tiny-gru:1"
    assert "chars consumed: " + str(len(PROMPT) + 20) in charlm("sessions", "show", sid).stdout
    fork_id = charlm("sessions", "fork", sid).stdout.strip()
    assert fork_id and fork_id != sid
    assert client.get_session(fork_id).chars_consumed == len(PROMPT) + 20
    listed = charlm("sessions", "list")
    assert sid in listed.stdout and fork_id in listed.stdout
    as_json = json.loads(charlm("sessions", "list", "--json", "-m", "tiny-gru").stdout)
    assert {s["id"] for s in as_json} >= {sid, fork_id}
    for session_id in (sid, fork_id):
        deleted = charlm("sessions", "delete", session_id)
        assert deleted.returncode == 0 and session_id in deleted.stdout
    assert sid not in charlm("sessions", "list").stdout


def test_models_and_health(charlm: CliRunner) -> None:
    table = charlm("models")
    assert table.returncode == 0
    for spec in ("tiny-rnn:1", "tiny-lstm:1 *", "tiny-gru:1"):
        assert spec in table.stdout
    assert table.stdout.splitlines()[0].endswith("DECODE")
    assert all(line.endswith(" int8") for line in table.stdout.splitlines()[1:4])  # auto, the default, on the CPU
    one = json.loads(charlm("models", "tiny-gru", "--json").stdout)
    assert one["architecture"] == "gru" and one["spec"] == "tiny-gru:1" and one["default"] is False
    assert (one["provider"], one["decode_precision"]) == ("cpu", "int8")
    shown = charlm("models", "tiny-lstm:1").stdout
    assert "architecture: lstm" in shown and "serving:      cpu, decode steps in int8" in shown
    health = charlm("health")
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"


def test_score_equals_library_feed(charlm: CliRunner, client: Client, tiny_text: str, tmp_path: Path) -> None:
    text = tiny_text[:900]
    path = tmp_path / "sample.txt"
    path.write_text(text, encoding="utf-8")
    proc = charlm("score", str(path), "-m", "tiny-rnn", "--chunk-size", "128", "--json")
    assert proc.returncode == 0, proc.stderr
    scored = json.loads(proc.stdout)
    expected = client.feed(text, model="tiny-rnn")
    assert scored["chars_consumed"] == len(text) and scored["chars_scored"] == expected.chars_scored
    assert abs(scored["bits_per_char"] - expected.bits_per_char) < 1e-6 * expected.bits_per_char
    plain = charlm("score", "-", "-m", "tiny-rnn", stdin=text)
    assert f"{expected.bits_per_char:.4f} bits/char" in plain.stdout


def test_bench_small(charlm: CliRunner) -> None:
    proc = charlm("bench", "-c", "3", "-n", "40", "--prompt", PROMPT, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["total_chars"] == 120 and report["completed"] == 3 and report["errors"] == {}
    assert report["ttfc_ms"]["count"] == 3 and report["chars_per_s"] > 0
    assert 0 < report["inter_char_ms"]["count"] <= 120 - 3  # every character after each stream's first chunk
    table = charlm("bench", "-c", "2", "-n", "30", "--prompt", PROMPT, "--channels", "2", "--no-progress")
    assert table.returncode == 0, table.stderr
    for needle in ("chars/s", "all streaming", "time to first chunk", "inter-character", "p99", "errors: none"):
        assert needle in table.stdout
    short = json.loads(charlm("bench", "-c", "2", "-n", "1", "-r", "4", "--prompt", PROMPT, "--json").stdout)
    assert short["completed"] == 8 == short["total_chars"] == short["ttfc_ms"]["count"] and short["requests_per_s"] > 0


def test_generate_cut_short_by_the_server_says_so(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(limits=Limits(max_chars=5_000_000), grace_seconds=0.2)
    proc = subprocess.Popen(cli_command("generate", PROMPT, "-n", "5000000", "--no-echo"), env=cli_env(server.target),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        assert proc.stdout.read(20)  # streaming
        server.drain().result(30)  # the grace period passes and the server cancels the generation
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1 and out, err
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "the server stopped the generation" in lines[0] and "cancelled" in lines[0]


def test_generate_into_a_closed_pipe_exits_quietly(charlm: CliRunner, server: RunningServer) -> None:
    proc = subprocess.Popen(cli_command("generate", PROMPT, "-n", "20000", "--no-echo"), env=cli_env(server.target),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert len(proc.stdout.read(10)) == 10
        proc.stdout.close()  # as `| head -c 10` does
        err = proc.stderr.read()
        proc.wait(30)
    finally:
        proc.kill()
    assert proc.returncode in (0, 141) and err == b""


def test_sessions_takes_connection_flags_before_its_action(charlm: CliRunner, server: RunningServer) -> None:
    proc = charlm("sessions", "--target", server.target, "list", target="127.0.0.1:1")
    assert proc.returncode == 0 and proc.stdout.startswith("ID"), proc.stderr
