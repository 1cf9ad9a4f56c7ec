"""``charlm`` subcommands generate, sessions, models, health and score."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from client.connection import ConnectOptions
from client.sync import Client
from client.types import Finish, ModelInfo, SessionInfo

Raw = argparse.RawDescriptionHelpFormatter


def _json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low`` (anything else is a usage error, exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {text}")
        return value

    return parse


def _cut_short(finish: Finish) -> int:
    """Exit status 1, with a note on stderr, when the server ended the generation early (Ctrl-C exits 130)."""
    if finish.reason != "cancelled":
        return 0
    print(f"charlm generate: the server stopped the generation after {finish.generated_chars} characters "
          "(finish reason 'cancelled'; it may be shutting down): the text is incomplete", file=sys.stderr)
    return 1


def cmd_generate(args: argparse.Namespace, opts: ConnectOptions) -> int:
    """Streams a generation to stdout, flushing each chunk (or JSON lines with --json)."""
    with Client(options=opts) as client:
        gen = client.generate(
            args.prompt, model=args.model, max_chars=args.max_chars, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
            stop=args.stop or (), session_id=args.session, logprobs=args.logprobs,
        )
        if args.json:
            for chunk in gen.chunks():
                _json({"event": "chunk", "text": chunk.text, **({"logprobs": chunk.logprobs} if args.logprobs else {})})
            finish = gen.result()
            _json({"event": "finish", **dataclasses.asdict(finish)})
            return _cut_short(finish)
        out = sys.stdout
        pending = args.prompt if args.echo else ""  # echoed with the first chunk, so a failed call prints nothing
        for text in gen:
            out.write(pending + text)
            out.flush()
            pending = ""
        finish = gen.result()
        out.write(pending)
        if not (gen.text or args.prompt).endswith("\n"):
            out.write("\n")
        out.flush()
        if args.verbose:
            print(f"[{finish.reason}: {finish.generated_chars} chars in {finish.total_ms:.1f} ms, first after "
                  f"{finish.time_to_first_char_ms:.1f} ms; model {finish.model}, seed {finish.seed}]", file=sys.stderr)
    return _cut_short(finish)


def _age(t: float) -> str:
    return f"{max(0.0, time.time() - t):.0f}s"


def _session_lines(s: SessionInfo) -> list[str]:
    return [f"id:             {s.id}", f"model:          {s.model}", f"chars consumed: {s.chars_consumed}",
            f"ttl:            {s.ttl_seconds}s (expires in {max(0.0, s.expires_at - time.time()):.0f}s)",
            f"idle:           {_age(s.last_used_at)}", f"age:            {_age(s.created_at)}",
            f"state bytes:    {s.state_bytes}", f"busy:           {'yes' if s.busy else 'no'}"]


def cmd_sessions(args: argparse.Namespace, opts: ConnectOptions) -> int:
    """sessions list | show | create | fork | delete."""
    with Client(options=opts) as client:
        if args.action == "list":
            sessions = client.list_sessions(args.model)
            if args.json:
                _json([dataclasses.asdict(s) for s in sessions])
                return 0
            print(f"{'ID':<34} {'MODEL':<20} {'CHARS':>9} {'TTL':>6} {'IDLE':>6} BUSY")
            for s in sessions:
                print(f"{s.id:<34} {s.model:<20} {s.chars_consumed:>9} {s.ttl_seconds:>5}s {_age(s.last_used_at):>6} "
                      f"{'yes' if s.busy else 'no'}")
            return 0
        if args.action == "delete":
            client.delete_session(args.id)
            print(f"deleted {args.id}")
            return 0
        if args.action == "show":
            info = client.get_session(args.id)
        elif args.action == "fork":
            info = client.fork_session(args.id, args.ttl).info
        else:
            prime = args.prime_file.read_text(encoding="utf-8") if args.prime_file else args.prime
            info = client.create_session(args.model, prime, args.ttl).info
        if args.json:
            _json(dataclasses.asdict(info))
        elif args.action == "show":
            print("\n".join(_session_lines(info)))
        else:
            print(info.id)
    return 0


def _model_lines(m: ModelInfo, default: bool) -> list[str]:
    return [f"model:        {m.spec}{'  (default)' if default else ''}", f"architecture: {m.architecture}",
            f"layers:       {m.layers}", f"hidden size:  {m.hidden_size}", f"embedding:    {m.embedding_size}",
            f"parameters:   {m.parameters}", f"vocabulary:   {m.vocab_size} chars {m.vocabulary!r}",
            f"corpus:       {m.corpus_name} ({m.corpus_chars} chars)",
            f"training:     {m.training_steps} steps, val {m.val_bits_per_char:.3f} bits/char",
            f"created:      {m.created_at}", f"serving:      {m.provider or '?'}, decode steps in "
            f"{m.decode_precision or '?'}, prompts in {m.prompt_precision or '?'}"]


def cmd_models(args: argparse.Namespace, opts: ConnectOptions) -> int:
    """Lists served models, or describes one."""
    with Client(options=opts) as client:
        listing = client.models()
        if args.name:
            info = client.model(args.name)
            if args.json:
                _json({**dataclasses.asdict(info), "spec": info.spec, "default": info.spec == listing.default_model})
            else:
                print("\n".join(_model_lines(info, info.spec == listing.default_model)))
            return 0
    if args.json:
        _json({"default_model": listing.default_model,
               "models": [{**dataclasses.asdict(m), "spec": m.spec} for m in listing.models]})
        return 0
    print(f"{'MODEL':<24} {'ARCH':<5} {'LAYERS':>6} {'HIDDEN':>6} {'PARAMS':>9} {'VOCAB':>5} {'VAL BPC':>7} DECODE")
    for m in listing.models:
        mark = " *" if m.spec == listing.default_model else ""
        print(f"{m.spec + mark:<24} {m.architecture:<5} {m.layers:>6} {m.hidden_size:>6} {m.parameters:>9} "
              f"{m.vocab_size:>5} {m.val_bits_per_char:>7.3f} {m.decode_precision or '?'}")
    print("* default model")
    return 0


def cmd_health(args: argparse.Namespace, opts: ConnectOptions) -> int:
    """Prints the health status; exit status 0 only when SERVING."""
    with Client(options=opts) as client:
        status = client.health(args.service)
    _json({"service": args.service, "status": status}) if args.json else print(status)
    return 0 if status == "SERVING" else 1


def _read_chunks(path: Path, size: int) -> Iterator[str]:
    stdin = str(path) == "-"
    if stdin and isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(encoding="utf-8")  # the input is UTF-8 whatever the locale says
    stream = sys.stdin if stdin else path.open(encoding="utf-8")
    with stream:
        try:
            while chunk := stream.read(size):
                yield chunk
        except UnicodeDecodeError as e:  # feed() gives this exception back to cmd_score as it is
            name = "standard input" if stdin else str(path)
            raise ValueError(f"{name} is not UTF-8 text (byte 0x{e.object[e.start]:02x}: {e.reason})") from None


def cmd_score(args: argparse.Namespace, opts: ConnectOptions) -> int:
    """Streams a file through Feed and prints its bits per character."""
    if str(args.file) != "-" and not args.file.is_file():
        raise ValueError(f"{args.file}: no such file")
    with Client(options=opts) as client:
        result = client.feed(_read_chunks(args.file, args.chunk_size), session_id=args.session, model=args.model)
    if result.chars_scored == 0:  # 0.0000 bits/char over nothing would read as a result
        why = "it is empty"
        if result.chars_consumed:
            why = f"{result.chars_consumed} character(s): the first of a fresh state has no context to score it on"
        raise ValueError(f"{args.file}: nothing to score ({why})")
    if args.json:
        _json({"file": str(args.file), **dataclasses.asdict(result)})
    else:
        print(f"{result.bits_per_char:.4f} bits/char ({result.nats_per_char:.4f} nats/char) over "
              f"{result.chars_scored} scored of {result.chars_consumed} characters")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Adds generate, sessions, models, health and score to the subcommand set."""
    g = sub.add_parser("generate", parents=[common], formatter_class=Raw, help="stream text after a prompt",
                       description="Sample text after PROMPT, printing characters as they arrive.",
                       epilog="example:\n  charlm generate 'ROMEO:' -n 300 -t 0.8 --top-k 20 --seed 1\n"
                              "  charlm generate --session ID -n 100   # continue a session")
    g.add_argument("prompt", nargs="?", default="", help="text to start from (may be empty with --session)")
    g.add_argument("-m", "--model", default="", help="'name' or 'name:version' (default: the server's)")
    g.add_argument("-n", "--max-chars", type=int, default=200, help="characters to sample (default %(default)s)")
    g.add_argument("-t", "--temperature", type=float, help="[0, 10]; 0 = greedy (default 1)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely characters (0 = off)")
    g.add_argument("--top-p", type=float, default=0.0, help="nucleus mass in (0, 1] (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=0.0, help="[1, 10] (0 = off)")
    g.add_argument("--seed", type=int, help="seed for reproducible output")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop after this text (repeatable)")
    g.add_argument("--session", default="", metavar="ID", help="continue this session and leave it updated")
    g.add_argument("--json", action="store_true", help="print JSON lines: chunk events, then a finish event")
    g.add_argument("--logprobs", action="store_true", help="with --json: log-probability of each character")
    g.add_argument("--no-echo", dest="echo", action="store_false", help="do not print the prompt first")
    g.add_argument("-v", "--verbose", action="store_true", help="print the finish summary to stderr")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("sessions", parents=[common], formatter_class=Raw,
                       help="list, show, create, fork or delete sessions",
                       description="Manage server-side sessions (hidden states kept between calls).",
                       epilog="example:\n  ID=$(charlm sessions create --prime 'ROMEO:')\n"
                              "  charlm generate --session $ID -n 50\n  charlm sessions fork $ID\n"
                              "  charlm sessions delete $ID")
    ss = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text, example in [("list", "list live sessions", "charlm sessions list --model tiny-lstm"),
                                  ("show", "describe one session", "charlm sessions show ID"),
                                  ("create", "create a session, print its id", "charlm sessions create --prime 'A:'"),
                                  ("fork", "copy a session's state into a new one", "charlm sessions fork ID"),
                                  ("delete", "delete a session", "charlm sessions delete ID")]:
        p = ss.add_parser(action, parents=[common], help=text, description=text[0].upper() + text[1:] + ".",
                          epilog=f"example:\n  {example}", formatter_class=Raw)
        if action in ("show", "fork", "delete"):
            p.add_argument("id", help="session id")
        if action in ("list", "create"):
            p.add_argument("-m", "--model", default="", help="model name or name:version")
        if action in ("create", "fork"):
            p.add_argument("--ttl", type=int, default=0, help="idle time-to-live in seconds (0 = default)")
        if action == "create":
            p.add_argument("--prime", default="", help="text the new state consumes first")
            p.add_argument("--prime-file", type=Path, help="read the priming text from this file")
        if action != "delete":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=cmd_sessions)

    m = sub.add_parser("models", parents=[common], formatter_class=Raw, help="list served models or describe one",
                       description="List the served models (* marks the default), or describe NAME.",
                       epilog="example:\n  charlm models\n  charlm models tiny-lstm:1 --json")
    m.add_argument("name", nargs="?", default="", help="'name' or 'name:version'")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(func=cmd_models)

    h = sub.add_parser("health", parents=[common], formatter_class=Raw, help="check the server's health",
                       description="Print the grpc.health.v1 status; exit 0 only when SERVING.",
                       epilog="example:\n  charlm health && echo up")
    h.add_argument("--service", default="", help="service name (default: the whole server)")
    h.add_argument("--json", action="store_true", help="machine-readable output")
    h.set_defaults(func=cmd_health)

    sc = sub.add_parser("score", parents=[common], formatter_class=Raw, help="bits per character of a file",
                        description="Stream FILE through Feed and print its bits per character under the model.",
                        epilog="example:\n  charlm score ../shared/data/tinyshakespeare.txt -m shakespeare")
    sc.add_argument("file", type=Path, help="UTF-8 text file ('-' = stdin)")
    sc.add_argument("-m", "--model", default="", help="model name or name:version (default: the server's)")
    sc.add_argument("--session", default="", metavar="ID", help="feed into this session instead of a fresh state")
    sc.add_argument("--chunk-size", type=at_least(1), default=4096,
                    help="characters per Feed message, at least 1 (default %(default)s)")
    sc.add_argument("--json", action="store_true", help="machine-readable output")
    sc.set_defaults(func=cmd_score)
