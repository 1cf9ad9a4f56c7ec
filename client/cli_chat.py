"""``charlm chat``: an interactive session over one Chat stream; Ctrl-C cancels a reply, not the session."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from client.commands import at_least, between
from client.connection import ConnectOptions
from client.errors import CharlmError, SessionBusy
from client.sync import Chat, Client

T = TypeVar("T")
DEFAULT_STOP = ("\n\n",)  # a blank line ends an answer
HELP = """commands:
  /fork      continue in a copy of this session (the current one is kept)
  /reset     start over with a fresh session
  /temp X    set the sampling temperature (0 = greedy, up to 10)
  /max N     set the longest answer, in characters
  /help      this text
  /quit      leave (also Ctrl-D, or Ctrl-C at the prompt)
a line of text is fed to the model, then it answers; an empty line asks it to go on.
Ctrl-C while it answers stops the answer and keeps the session."""


@dataclass(frozen=True)
class ReplyConfig:
    """How the model answers each turn."""

    max_chars: int
    stop: tuple[str, ...]
    temperature: float
    top_k: int
    seed: int | None


def _when_idle(call: Callable[[], T], wait_s: float = 3.0) -> T:
    """Runs ``call``, retrying SESSION_BUSY for a while: a stream just closed frees its session asynchronously."""
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            return call()
        except SessionBusy:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 0.2)


@contextlib.contextmanager
def _ctrl_c_cancels(chat: Chat) -> Iterator[None]:
    """While a reply streams, SIGINT sends ChatCancel instead of raising KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, lambda *_: chat.cancel())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class ChatRepl:
    """The read-feed-answer loop and its slash commands."""

    def __init__(self, client: Client, args: argparse.Namespace) -> None:
        self.client = client
        self.model = args.model
        self.keep = args.keep or bool(args.session)
        stop = tuple(args.stop or DEFAULT_STOP)
        self.reply = ReplyConfig(args.max_chars, stop, args.temperature, args.top_k, args.seed)
        self.created: list[str] = []  # sessions this command made, deleted on exit unless --keep
        self.chat = self._open(args.session)

    def _open(self, session_id: str) -> Chat:
        chat = self.client.chat(session_id=session_id, model="" if session_id else self.model)
        if not session_id:
            self.created.append(chat.session.id)
        return chat

    def _say(self, text: str) -> None:
        print(f"[{text}]", flush=True)

    def run(self) -> int:
        """Loops until /quit, Ctrl-D or Ctrl-C at the prompt."""
        self._say(f"session {self.chat.session.id} on {self.chat.session.model}; /help for commands")
        try:
            while True:
                try:
                    line = input("> ")
                except (EOFError, KeyboardInterrupt):
                    print()
                    return 0
                try:
                    if line.startswith("/"):
                        if not self._command(line.strip()):
                            return 0
                    else:
                        self._turn(line)
                except CharlmError as e:
                    self._say(f"error: {e}")
                    if not line.startswith("/"):
                        self._reopen()
        finally:
            self._close()

    def _turn(self, line: str) -> None:
        if line:
            self.chat.feed(line + "\n")
        r = self.reply
        gen = self.chat.generate(max_chars=r.max_chars, stop=r.stop, temperature=r.temperature, top_k=r.top_k,
                                 seed=r.seed)
        with _ctrl_c_cancels(self.chat):
            for text in gen:
                sys.stdout.write(text)
                sys.stdout.flush()
        if not gen.text.endswith("\n"):
            print()
        if gen.finish is not None and gen.finish.reason == "cancelled":
            self._say("cancelled")
        self.reply = replace(r, seed=None)  # a seed applies once; later turns continue the session's stream

    def _command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            print(HELP)
        elif name == "/temp":
            self._set_temperature(arg.strip())
        elif name == "/max":
            if arg.strip().isdigit() and int(arg) > 0:
                self.reply = replace(self.reply, max_chars=int(arg))
                self._say(f"answers up to {int(arg)} characters")
            else:
                self._say(f"/max needs a positive whole number, got {arg.strip()!r}")
        elif name == "/fork":
            self._fork()
        elif name == "/reset":
            self.chat.close()
            self.chat = self._open("")
            self._say(f"reset: fresh session {self.chat.session.id}")
        else:
            self._say(f"unknown command {name!r}; /help lists them")
        return True

    def _set_temperature(self, arg: str) -> None:
        try:
            value = float(arg)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 10.0:
            self._say(f"/temp needs a number in [0, 10], got {arg!r}")
            return
        self.reply = replace(self.reply, temperature=value)
        self._say(f"temperature {value:g}")

    def _fork(self) -> None:
        # The server forks only an idle session: end this stream first, then attach to the copy.
        old = target = self.chat.session.id
        self.chat.close()
        try:
            fork = _when_idle(lambda: self.client.fork_session(old))
            self.created.append(fork.id)
            target = fork.id
        finally:  # back on a stream either way: the copy, or the original if forking failed
            self.chat = _when_idle(lambda: self.client.chat(session_id=target))
        self._say(f"forked: now in session {target} (was {old})")

    def _reopen(self) -> None:
        # A failed call ends the Chat stream; the session lives on, so attach a new stream to it.
        session_id = self.chat.session.id
        self.chat.close()
        self.chat = _when_idle(lambda: self.client.chat(session_id=session_id))

    def _close(self) -> None:
        self.chat.close()
        if self.keep:
            self._say(f"kept session {self.chat.session.id}")
            return
        for session_id in self.created:
            with contextlib.suppress(CharlmError):
                self.client.delete_session(session_id)


def cmd_chat(args: argparse.Namespace, opts: ConnectOptions) -> int:
    """Runs the interactive chat."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    with Client(options=opts) as client:
        return ChatRepl(client, args).run()


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Adds the chat subcommand."""
    p = sub.add_parser("chat", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="interactive session: you type, the model answers",
                       description="Talk to a model over one session: each line you type is fed to it, then "
                                   "it answers until a stop sequence or --max-chars.\n\n" + HELP,
                       epilog="example:\n  charlm chat -m shakespeare -t 0.7 --max-chars 400")
    p.add_argument("-m", "--model", default="", help="model of the new session (default: the server's)")
    p.add_argument("--session", default="", metavar="ID", help="attach to an existing session (kept on exit)")
    p.add_argument("-n", "--max-chars", type=at_least(1), default=300, help="longest answer (default %(default)s)")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="end an answer after this text (repeatable; default a blank line)")
    p.add_argument("-t", "--temperature", type=between(0.0, 10.0), default=0.8,
                   help="sampling temperature in [0, 10] (default %(default)s)")
    p.add_argument("--top-k", type=at_least(0), default=0, help="keep the k most likely characters (0 = off)")
    p.add_argument("--seed", type=at_least(0), help="seed of the first answer")
    p.add_argument("--keep", action="store_true", help="keep the sessions made here when leaving")
    p.set_defaults(func=cmd_chat)
