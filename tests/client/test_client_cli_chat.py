"""`charlm chat` driven through a pseudo-terminal: turns, /fork, Ctrl-C cancelling a reply, /quit."""

from __future__ import annotations

import re
import sys
import time

import pexpect
from fixtures.charlm_client import REPO, cli_env
from fixtures.server import RunningServer

from client import Client

PROMPT = "\r\n> "  # what the REPL prints when it waits for the next line


def spawn_chat(server: RunningServer, *args: str) -> pexpect.spawn:
    """`charlm chat ARGS` on a pty, its output decoded."""
    env = {**cli_env(server.target), "TERM": "dumb"}  # no readline escape sequences around the prompt
    child = pexpect.spawn(sys.executable, ["-m", "client", "chat", *args], cwd=str(REPO), env=env,
                          encoding="utf-8", timeout=30, dimensions=(40, 200))
    child.logfile_read = sys.stdout  # the transcript, shown by pytest when a test fails
    return child


def test_chat_turns_fork_cancel_and_quit(server: RunningServer, client: Client) -> None:
    child = spawn_chat(server, "-m", "tiny-lstm", "--max-chars", "30", "--stop", "qqqq", "--seed", "1")
    try:
        child.expect(r"\[session (\S+) on tiny-lstm:1; /help for commands\]")
        first_id = child.match.group(1)
        child.expect_exact("> ")
        for line in ("The keeper", "lit the lamp"):  # two turns: fed, answered, prompt again
            child.sendline(line)
            child.expect_exact(PROMPT)
        assert client.get_session(first_id).chars_consumed >= len("The keeper\nlit the lamp\n") + 2 * 30

        child.sendline("/fork")
        child.expect(r"\[forked: now in session (\S+) \(was (\S+)\)\]")
        fork_id, was = child.match.group(1), child.match.group(2)
        assert was == first_id and fork_id != first_id
        child.expect_exact("> ")

        base = client.get_session(fork_id).chars_consumed
        child.sendline("/max 60000")
        child.expect_exact("[answers up to 60000 characters]")
        child.sendline("The sea")
        time.sleep(1.0)  # let the long answer stream for a while
        child.sendintr()  # Ctrl-C: cancels the answer, not the session
        child.expect_exact("[cancelled]")
        child.expect_exact("> ")
        consumed = client.get_session(fork_id).chars_consumed
        assert base + len("The sea\n") < consumed < base + len("The sea\n") + 60000  # stopped part-way

        child.sendline("/max 10")
        child.expect_exact("> ")
        child.sendline("/temp 0.5")
        child.expect_exact("[temperature 0.5]")
        child.expect_exact("> ")
        child.sendline("and")  # the session still answers after the cancel
        child.expect_exact(PROMPT)
        assert client.get_session(fork_id).chars_consumed >= consumed + len("and\n") + 10
        assert "error" not in child.before

        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    live = {s.id for s in client.list_sessions()}
    assert first_id not in live and fork_id not in live  # sessions made by the chat are deleted on exit


def test_chat_exits_on_ctrl_d_and_ctrl_c_at_the_prompt(server: RunningServer) -> None:
    for key in ("\x04", "\x03"):
        child = spawn_chat(server, "--max-chars", "5")
        try:
            child.expect_exact("> ")
            child.sendline("/help")
            child.expect(re.escape("/fork"))
            child.expect_exact("> ")
            child.send(key)
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0 and "Traceback" not in (child.before or "")
