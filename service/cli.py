"""`charlm-serve`: the ServiceConfig, built once from flags and CHARLM_* variables (flag > env > default)."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from service.config import ServiceConfig
from service.logs import setup_logging

_DEFAULT = ServiceConfig()
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its flag, the dotted config field it sets, its type and what it means."""

    flag: str
    field: str  # "port" or "limits.max_streams"
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    metavar: str = ""  # "" = from the type

    @property
    def env(self) -> str:
        """The environment variable, e.g. CHARLM_MAX_STREAMS for --max-streams."""
        return "CHARLM_" + self.flag.lstrip("-").replace("-", "_").upper()

    @property
    def default(self) -> Any:
        """The default, read from the dataclasses (one source of truth)."""
        value: Any = _DEFAULT
        for part in self.field.split("."):
            value = getattr(value, part)
        return value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    # (argparse shows an ArgumentTypeError's own words; with a ValueError it says "invalid _bool value")
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


OPTIONS = [
    Option("--model-repo", "model_repo", Path, "model repository: <repo>/<name>/<version>/{model.onnx,meta.json}"),
    Option("--default-model", "default_model", str, "model served when a request names none (\"\" = shakespeare, "
           "else the first)"),
    Option("--versions", "versions", int, "the newest versions of each model name to serve (0 = all); each "
           "served version holds its own runtime and threads"),
    Option("--host", "host", str, "address to listen on"),
    Option("--port", "port", int, "gRPC port (0 = any free port)"),
    Option("--metrics-host", "metrics_host", str, "address of the Prometheus /metrics endpoint"),
    Option("--metrics-port", "metrics_port", int, "port of /metrics (0 = any free port, -1 = off)"),
    Option("--grace-seconds", "grace_seconds", float, "on SIGTERM, how long in-flight streams may still run"),
    Option("--reflection", "reflection", _bool, "serve gRPC server reflection (true/false)"),
    Option("--log-format", "log_format", str.lower, "log line format", ("logfmt", "json")),
    Option("--log-level", "log_level", str.upper, "log level, any case", ("DEBUG", "INFO", "WARNING", "ERROR")),
    Option("--access-log", "access_log", _bool, "log a line per finished RPC: rpc, status code, duration, model, "
           "session (first 8 characters), characters (true/false)"),
    Option("--malloc-arenas", "malloc_arenas", int, "glibc malloc arenas the process's threads share; fewer hold "
           "less memory under many streams (0 = glibc's own: MALLOC_ARENA_MAX, else 8 per core)"),
    Option("--provider", "runtime.provider", str, "onnxruntime execution provider (cuda falls back to cpu)",
           ("cpu", "cuda")),
    Option("--intra-op-threads", "runtime.intra_op_threads", int, "onnxruntime threads per op (0 = all cores)"),
    Option("--inter-op-threads", "runtime.inter_op_threads", int, "onnxruntime threads across ops"),
    Option("--ort-spinning", "runtime.spinning", _bool, "onnxruntime threads spin within the decode steps of a "
           "lane stepping alone (true/false)"),
    Option("--ort-prefill-spinning", "runtime.prefill_spinning", _bool,
           "onnxruntime threads spin within prompt calls (true/false)"),
    Option("--ort-arena", "runtime.cpu_mem_arena", _bool, "onnxruntime's CPU memory arena (true/false); off, "
           "a call's scratch memory goes back to malloc instead of being kept at its largest"),
    Option("--decode-steps", "runtime.decode_steps", int, "decode steps one onnxruntime call may run while the "
           "batch's characters may wait that long (see --steps-wait-ms; 1 = one step per call)"),
    Option("--few-rows-steps", "runtime.few_rows_steps", int, "decode steps a call of at most --few-rows rows "
           "may run instead (0 = --decode-steps): fewer calls' Python for a lane's few rows"),
    Option("--few-rows", "runtime.few_rows", int, "the most rows a call of --few-rows-steps runs"),
    Option("--device-steps", "runtime.device_steps", int, "decode steps a device batch's call (CUDA) may run "
           "instead, at any rows (0 = --decode-steps)"),
    Option("--decode-precision", "runtime.decode_precision", str.lower, "decode steps' matrix products: int8 "
           "(~1.6x faster steps on the CPU at the same loss; cpu provider only), fp32 as exported (a seeded text "
           "differs from int8's), or auto = int8 on the CPU where the graph allows it, else fp32",
           ("auto", "fp32", "int8")),
    Option("--prompt-precision", "runtime.prompt_precision", str.lower, "prompt calls' LSTM layers: int8 "
           "(onnxruntime's fused int8 LSTM: a lone short prompt's first character ~0.2 ms sooner at the same "
           "loss; cpu provider, LSTM models only), fp32 as exported, or auto = int8 where decode steps run in int8 "
           "and the model is an LSTM, else fp32", ("auto", "fp32", "int8")),
    Option("--small-prompt-chars", "runtime.small_prompt_chars", int, "int8 prompt calls of at most this many "
           "characters in all (rows x characters) run on one thread, as a lone row's do (0 = those only); "
           "`python -m bench.prompt_threads` measures where a second thread starts to pay"),
    Option("--device-batch", "runtime.device_batch", str.lower, "where decode batches keep their states between "
           "calls: auto = in device memory on CUDA, else numpy; on = onnxruntime values on any provider (every call "
           "runs --max-batch rows); off = numpy, copied in and out at every call", ("auto", "on", "off")),
    Option("--cuda-graphs", "runtime.cuda_graphs", _bool, "with states in device memory on CUDA, replay each "
           "decode call as a captured CUDA graph (true/false; off where capture fails, with a warning)"),
    Option("--lanes", "engine.lanes", int, "decode batches per model stepped side by side, a thread each "
           "(0 = one per core on CPU, 1 on CUDA)"),
    Option("--lane-fill", "engine.lane_fill", int, "streams a lane takes before the next lane gets any (0 = "
           "measured at start)"),
    Option("--idle-looks", "engine.idle_looks", int, "where a measured lane fill above 2 may hide a lower one, "
           "look again this many times at most, each after 2 s with no request (0 = never)"),
    Option("--all-threads-rows", "engine.all_threads_rows", int, "rows from which a lane stepping alone runs its "
           "decode calls on all of onnxruntime's threads, with fewer on its own thread (0 = measured at start)"),
    Option("--max-batch", "engine.max_batch", int, "most streams one step of a lane advances"),
    Option("--prefill-chunk", "engine.prefill_chunk", int, "prompt characters of one stream per prefill call"),
    Option("--prefill-chars", "engine.prefill_chars", int, "prompt characters of all streams per prefill call"),
    Option("--inline-prompt-chars", "engine.inline_prompt_chars", int, "a prompt this short, sent while the "
           "model holds and sends no other request, is consumed on the event loop without a thread hand-off "
           "(0 = never)"),
    Option("--stream-buffer-chars", "engine.stream_buffer_chars", int,
           "characters buffered per stream for a slow reader"),
    Option("--messages-per-s", "engine.messages_per_s", float, "generated-text messages per second a model's "
           "streams aim at in all, sent together at ticks they share; a large batch coalesces more characters per "
           "message (0 = one per step)",
           metavar="RATE"),
    Option("--steps-wait-ms", "engine.steps_wait_ms", float, "how long a call of several decode steps may hold "
           "back a character where the message budget lets characters wait less (0 = the budget alone)",
           metavar="MS"),
    Option("--max-streams", "limits.max_streams", int, "concurrent Generate/Feed/Chat streams"),
    Option("--max-prompt-chars", "limits.max_prompt_chars", int, "longest prompt, prime or fed text message"),
    Option("--max-chars", "limits.max_chars", int, "largest max_chars a request may ask for"),
    Option("--max-stop-sequences", "limits.max_stop_sequences", int, "stop sequences per request"),
    Option("--max-message-bytes", "limits.max_message_bytes", int, "largest gRPC message, either way"),
    Option("--session-ttl-seconds", "sessions.ttl_seconds", float, "idle time-to-live of a session by default"),
    Option("--max-session-ttl-seconds", "sessions.max_ttl_seconds", float, "largest TTL a session may ask for"),
    Option("--max-sessions", "sessions.max_sessions", int, "sessions kept; beyond, the least recently used "
           "idle one is evicted"),
    Option("--session-sweep-seconds", "sessions.sweep_seconds", float, "how often expired sessions are removed"),
    Option("--auth-token", "security.auth_token", str, "bearer token every charlm.v1 call must send (health and "
           "reflection stay open; prefer the variable or --auth-token-file: a flag shows in ps)", metavar="TOKEN"),
    Option("--auth-token-file", "security.auth_token_file", Path, "file of accepted bearer tokens, one per line, "
           "re-read when it changes (so tokens can rotate)", metavar="FILE"),
    Option("--tls-cert", "security.tls_cert", Path, "PEM certificate chain: serve gRPC over TLS (with --tls-key); "
           "the TLS files are re-read when they change (so certificates can rotate)", metavar="PEM"),
    Option("--tls-key", "security.tls_key", Path, "PEM private key of --tls-cert", metavar="PEM"),
    Option("--tls-client-ca", "security.tls_client_ca", Path, "PEM CA certificate(s): require and verify client "
           "certificates signed by them (mutual TLS)", metavar="PEM"),
    Option("--max-connection-age-seconds", "max_connection_age_seconds", float, "close each client connection "
           "(GOAWAY) after about this long so that clients reconnect and spread over new replicas (0 = never)"),
    Option("--max-connection-age-grace-seconds", "max_connection_age_grace_seconds", float, "how long calls in "
           "flight on such a connection may still run (0 = until they end)"),
    Option("--accept-slots", "accept_slots", int, "requests for new Generate calls kept pending besides grpc.aio's "
           "own, so that a burst of new calls is taken together (0 = grpc.aio's alone)"),
]

_METAVARS: dict[Callable[[str], Any], str] = {Path: "DIR", int: "N", float: "SECONDS", _bool: "BOOL"}

EXAMPLE = """example:
  charlm-serve --model-repo models --port 50051 --max-streams 512
  CHARLM_PROVIDER=cuda CHARLM_LOG_FORMAT=json charlm-serve     # same settings from the environment
"""


class _Parser(argparse.ArgumentParser):
    json_errors = False  # with --log-format json, an error is one JSON log record, as every other line then

    def error(self, message: str) -> NoReturn:
        """Exits 2 with one line: no usage (30 lines, in which a container's log would bury the error)."""
        if self.json_errors:
            setup_logging("json")
            log.error("%s: error: %s", self.prog, message, extra={"error": message, "exit_status": 2})
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message}\n")


class _FormatParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)  # (not an exit: the full parser reports it)


def _json_errors(argv: Sequence[str] | None, environ: Mapping[str, str]) -> bool:
    """True when the command line asks for JSON logs (flag, else variable), read as argparse will read it."""
    o = next(o for o in OPTIONS if o.flag == "--log-format")
    pre = _FormatParser(add_help=False)
    pre.add_argument(o.flag, type=o.type, choices=o.choices)
    try:
        value = pre.parse_known_args(argv)[0].log_format
    except ValueError:  # the error is in --log-format itself: the format is unknown, so plain text
        return False
    if value is None and o.env in environ:
        value = o.type(environ[o.env])
    return bool(value == "json")  # (bool: the type's result is Any to mypy)


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    """The argparse parser; every flag defaults to None so that env and defaults can fill in."""
    p = _Parser(
        prog="charlm-serve", description="Serve character-level language models over gRPC (charlm.v1).",
        epilog=EXAMPLE + "\nEach flag can also be set by its CHARLM_* variable; a flag wins over the variable.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.json_errors = json_errors
    for o in OPTIONS:
        metavar = "{" + ",".join(o.choices) + "}" if o.choices else o.metavar or _METAVARS.get(o.type, "TEXT")
        default = '""' if o.default == "" else str(o.default).lower() if isinstance(o.default, bool) else o.default
        p.add_argument(o.flag, type=o.type, choices=o.choices, default=None, metavar=metavar,
                       help=f"{o.help} [env {o.env}; default {default}]".replace("%", "%%"))
    return p


SECRETS = frozenset({"security.auth_token"})  # config fields whose values no message may show

def build_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """The frozen config from flags, then CHARLM_* variables, then the dataclass defaults."""
    environ = os.environ if environ is None else environ
    parser = build_parser(_json_errors(argv, environ))
    args = parser.parse_args(argv)
    groups: dict[str, dict[str, Any]] = {"": {}}
    sources: dict[str, str] = {}  # flag -> what set it, to name it in an error: "--port" or "CHARLM_PORT='1'"
    for o in OPTIONS:
        value = getattr(args, o.flag.lstrip("-").replace("-", "_"))
        if value is not None:
            sources[o.flag] = o.flag
        if value is None and o.env in environ:
            # (a secret's value never goes into an error: it would land in the logs)
            sources[o.flag] = o.env if o.field in SECRETS else f"{o.env}={environ[o.env]!r}"
            try:
                value = o.type(environ[o.env])
            except (ValueError, argparse.ArgumentTypeError) as e:
                parser.error(f"{sources[o.flag]}: {e}")
            if o.choices and value not in o.choices:
                parser.error(f"{sources[o.flag]}: choose from {', '.join(o.choices)}")
        if value is not None:
            group, _, name = o.field.rpartition(".")
            groups.setdefault(group, {})[name] = value
    try:  # the dataclasses check their own ranges (e.g. RuntimeConfig.provider)
        nested = {g: dataclasses.replace(getattr(_DEFAULT, g), **kv) for g, kv in groups.items() if g}
        return dataclasses.replace(_DEFAULT, **groups[""], **nested)
    except ValueError as e:
        parser.error(_named(str(e), sources))


def _named(message: str, sources: Mapping[str, str]) -> str:
    """A config error ("port: must be ...") led by the flag or variable that set the field it names."""
    name = message.split(":", 1)[0]
    option = next((o for o in OPTIONS if o.field.rpartition(".")[2] == name), None)
    if option is None:
        return message
    return f"{sources.get(option.flag, f'{option.flag} / {option.env}')}: {message}"


_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(arenas: int) -> bool:
    """Caps glibc's malloc arenas at ``arenas`` for threads that start from now on (0: leaves glibc's own
    setting); False where it was left or the C library has no ``mallopt`` (not glibc)."""
    if arenas <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `charlm-serve` and `python -m service`."""
    config = build_config(argv)
    setup_logging(config.log_format, config.log_level)  # before the imports below, so that their warnings are logs
    from service.server import serve  # after parsing, so that --help stays fast

    limit_malloc_arenas(config.malloc_arenas)  # before the server starts its threads
    try:
        return asyncio.run(serve(config))
    except (OSError, ValueError) as e:  # no loadable model, port in use, bad TLS files: a clear one-liner
        if config.log_format == "json":  # stderr carries JSON lines only
            log.error("start failed: %s", e, extra={"error": str(e)})
        else:
            print(f"charlm-serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
