"""The ``charlm`` command line: argparse subcommands over the sync client; errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from charlm.v1.metadata import usable_request_id

from client import cli_bench, cli_chat, commands
from client.connection import DEFAULT_TARGET, ConnectOptions, target_from_env
from client.errors import CharlmError

_HINTS: dict[str, str] = {
    "MODEL_NOT_FOUND": "run `charlm models` to list the served models",
    "SESSION_NOT_FOUND": "run `charlm sessions list`, or create one with `charlm sessions create`",
    "SESSION_EXPIRED": "the session idled past its TTL; create a new one with `charlm sessions create`",
    "SESSION_EVICTED": "the server evicted it to make room; create a new one with `charlm sessions create`",
    "DRAINING": "the server is shutting down; retry in a moment or against another instance",
}
_CODE_HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: "fix the value named above (see `--help` for the ranges)",
    grpc.StatusCode.OUT_OF_RANGE: "fix the value named above (see `--help` for the ranges)",
    grpc.StatusCode.NOT_FOUND: "check the name or id (`charlm models`, `charlm sessions list`)",
    grpc.StatusCode.ABORTED: "another stream is using this session; wait until it ends (or stop it), then retry",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the server is at a limit; retry later or ask for less",
    grpc.StatusCode.FAILED_PRECONDITION: "the session or model is not in a state that allows this",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the server did not answer in time; raise --timeout or check the server",
    grpc.StatusCode.UNAUTHENTICATED: "pass a valid --token (or set CHARLM_TOKEN)",
    grpc.StatusCode.PERMISSION_DENIED: "pass a token that is allowed this call (--token / CHARLM_TOKEN)",
}
# Hints of one command that replace the generic ones: health knows nothing of models and sessions.
_COMMAND_HINTS: dict[tuple[str, grpc.StatusCode], str] = {
    ("health", grpc.StatusCode.NOT_FOUND): "the server has no health status for that --service name; "
                                           "leave --service out to check the whole server",
}
# The command-line option behind each request field that InvalidArgument names.
_OPTIONS = {"max_chars": "-n/--max-chars", "sampling.temperature": "-t/--temperature", "sampling.top_k": "--top-k",
            "sampling.top_p": "--top-p", "sampling.repetition_penalty": "--repetition-penalty",
            "sampling.seed": "--seed", "ttl_seconds": "--ttl", "stop": "--stop"}


def explain(err: CharlmError, target: str, command: str = "") -> str:
    """One line: what failed, the status (and reason), what to try, and the request id to give an operator."""
    line = _explain(err, target, command)
    return f"{line} (request id {err.request_id})" if err.request_id else line


def _explain(err: CharlmError, target: str, command: str) -> str:
    message = " ".join(err.message.split())
    tag = err.status + (f", {err.reason}" if err.reason and err.reason != err.status else "")
    if err.code == grpc.StatusCode.UNAVAILABLE and err.reason != "DRAINING":
        hint = f"is a server running at {target}? start one with `charlm-serve`, or pass --target / set CHARLM_TARGET"
        return f"cannot reach the server at {target} ({tag}: {message}); {hint}"
    option = _OPTIONS.get(err.field or "")
    if option and err.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return f"{message} ({tag}); fix {option} (see `--help` for the ranges)"
    return f"{message} ({tag}); {_hint(err, command)}"


def _hint(err: CharlmError, command: str) -> str:
    if err.code is not None and (command, err.code) in _COMMAND_HINTS:
        return _COMMAND_HINTS[(command, err.code)]
    return _HINTS.get(err.reason) or (_CODE_HINTS.get(err.code) if err.code else None) or "see the server's log"


def options_from_args(args: argparse.Namespace) -> ConnectOptions:
    """ConnectOptions from the common flags (built once, here at the entry point)."""
    return ConnectOptions(
        target=args.target,
        tls=args.tls,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.key,
        token=args.token,
        request_id=args.request_id,
        timeout=args.timeout,
    )


def _connection_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    # On the main parser with real defaults, on every subcommand with SUPPRESS so that a flag given before
    # the subcommand (`charlm --target H:P health`) is not overwritten by the subcommand's default.
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    g = parser.add_argument_group("connection")
    g.add_argument("--target", default=default(target_from_env()),
                   help=f"server address host:port (default: $CHARLM_TARGET or {DEFAULT_TARGET})")
    g.add_argument("--timeout", type=float, default=default(30.0), metavar="S",
                   help="deadline in seconds of unary calls (default 30)")
    g.add_argument("--tls", action="store_true", default=default(False),
                   help="use TLS with the system's root certificates")
    g.add_argument("--ca", type=Path, default=default(None), metavar="PEM",
                   help="CA certificate to verify the server (implies --tls)")
    g.add_argument("--cert", type=Path, default=default(None), metavar="PEM",
                   help="client certificate for mutual TLS (with --key)")
    g.add_argument("--key", type=Path, default=default(None), metavar="PEM", help="client private key for mutual TLS")
    g.add_argument("--token", default=default(os.environ.get("CHARLM_TOKEN")),
                   help="bearer token sent as 'authorization' metadata (default: $CHARLM_TOKEN)")
    g.add_argument("--request-id", type=_request_id, default=default(None), metavar="ID",
                   help="x-request-id sent with every call of this command, to find them in the server's log "
                        "(1-128 printable ASCII characters; default: a fresh id per call)")


def _request_id(value: str) -> str:
    if not usable_request_id(value):
        raise argparse.ArgumentTypeError("must be 1 to 128 printable ASCII characters, no space at either end")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="charlm",
        description="Talk to a charlm server: stream text, manage sessions, score files, measure load.",
        epilog="example:\n  charlm generate 'ROMEO:' -n 300 -t 0.8 --top-k 20 --seed 1\n"
               "  CHARLM_TARGET=10.0.0.5:50051 charlm models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_flags(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _connection_flags(common, defaults=False)
    commands.register(sub, common)
    cli_chat.register(sub, common)
    cli_bench.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``charlm`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    name = " ".join(filter(None, [args.command, getattr(args, "action", None)]))
    try:
        opts = options_from_args(args)
        return int(args.func(args, opts) or 0)
    except CharlmError as e:
        print(f"charlm {name}: {explain(e, args.target, args.command)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`charlm generate ... | head`): exit quietly, as other tools do on SIGPIPE. Python
        # would flush stdout again at exit and complain, so point it at /dev/null (the Python docs' recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (OSError, ValueError) as e:  # unreadable files, bad TLS setup: local problems, no gRPC status
        print(f"charlm {name}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
