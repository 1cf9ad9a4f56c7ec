"""The server's configuration: frozen dataclasses built once at the entry point (service/cli.py) and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from service.runtime import RuntimeConfig

LogFormat = Literal["logfmt", "json"]


def _positive(config: object) -> None:
    """Every numeric field of a limits-like dataclass must be > 0 (a zero limit would refuse everything)."""
    for f in fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if isinstance(value, int | float) and not value > 0:
            raise ValueError(f"{f.name}: must be > 0, got {value}")


@dataclass(frozen=True)
class EngineConfig:
    """How one model's engine batches."""

    # Decode batches stepped side by side, each by a thread of its own (service/lane.py); 0 = one per core
    # on CPU (the process's CPU affinity and cgroup quota), 1 on CUDA
    lanes: int = 0
    # Streams a lane takes before the next one gets any; past that, new streams go to the lane holding the
    # fewest. 0 = measured by the engine before it serves (service/tuning.py): on some machines a few streams
    # step cheaper in one lane (one step's Python for all of them), on others spread over the lanes.
    lane_fill: int = 0
    # A lane stepping alone (the model's only lane with rows) runs its decode calls on all of onnxruntime's
    # threads from this many rows, with fewer on its own thread, as lanes side by side do. 0 = measured.
    all_threads_rows: int = 0
    max_batch: int = 256  # decode rows per step of a lane; further streams wait for a free row
    prefill_chunk: int = 256  # characters per sequence call when consuming prompts and fed text
    # Characters of all streams together in one prefill call (streams x chunk): a call's scratch memory
    # (~10 KB per character for the shipped model) and how long it holds up the decode steps grow with it.
    prefill_chars: int = 4096
    stream_buffer_chars: int = 4096  # unread characters per stream before it stops being stepped
    # A prompt of at most this many characters that comes alone (the engine holds no other request and sends
    # no other generation's messages) is consumed, and its first character drawn, on the event loop itself:
    # through a step thread that costs two thread hand-offs (~0.3 ms of ~2 ms to the first character on 2
    # cores), and no other stream waits for the loop meanwhile (64 characters take ~2 ms). Requests that come
    # together go to a lane, which consumes their prompts in one call. 0 = every prompt in a step thread.
    inline_prompt_chars: int = 64
    # Consumers are woken (and so messages sent) about messages_per_s times a second at most, over all the
    # decoding streams: with n streams in the batch, a stream's characters wait up to n / messages_per_s
    # seconds and leave together, at ticks that all the model's streams share (their messages then cost gRPC
    # half the CPU of messages spread over time). A message costs ~80-200 µs of CPU (server and client
    # together), a character at batch 64 ~15-21 µs of engine CPU, so a message per character would cost
    # several times the engine (docs/performance.md). A stream's first character leaves at once. 0 = wake
    # every stream at every step.
    messages_per_s: float = 1000.0
    # How long a call of several decode steps (--decode-steps) may hold back its first character (K - 1
    # steps) where the message budget above lets characters wait less: a lane runs K steps per call while
    # they take at most the longer of this and half that wait. One stream's characters then leave K at a time
    # every K steps (~1.4 ms for the shipped model), and it is served ~1.5x faster than one step per call
    # (docs/performance.md); a prompt arriving meanwhile waits for one call at most. 0 = the message budget
    # alone (one stream then runs one step per call).
    steps_wait_ms: float = 2.0
    # Where a measured lane fill above 2 leaves row counts unsettled, looks at them again, at most this many,
    # each once no request has come for idle_look_after_s seconds (service/idle_looks.py). 0 = never.
    idle_looks: int = 5
    idle_look_after_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.idle_look_after_s > 0:
            raise ValueError(f"idle_look_after_s: must be > 0, got {self.idle_look_after_s}")
        for name in ("lanes", "lane_fill", "all_threads_rows", "idle_looks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("max_batch", "prefill_chunk", "prefill_chars", "stream_buffer_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("messages_per_s", "steps_wait_ms", "inline_prompt_chars"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client can ask of the server; beyond them requests fail, memory never grows unbounded."""

    max_streams: int = 1024  # concurrent Generate/Feed/Chat streams over all models
    max_prompt_chars: int = 65536  # prompt, prime and each feed/chat text message
    max_chars: int = 65536  # upper bound of a request's max_chars
    max_stop_sequences: int = 16
    max_stop_chars: int = 256  # length of one stop sequence
    max_message_bytes: int = 4 * 1024 * 1024  # gRPC send/receive message size

    def __post_init__(self) -> None:
        _positive(self)


@dataclass(frozen=True)
class SessionConfig:
    """The in-memory session store: idle TTL, capacity, and how often expired sessions are swept."""

    ttl_seconds: float = 600.0  # idle time-to-live when a request sets none
    max_ttl_seconds: float = 86400.0  # a per-session TTL above this is rejected
    max_sessions: int = 10000  # beyond this the least recently used idle session is evicted
    sweep_seconds: float = 5.0  # how often expired sessions are removed
    remember_gone: int = 100000  # how many expired/evicted ids are remembered to explain NOT_FOUND

    def __post_init__(self) -> None:
        _positive(self)


def visible_ascii(text: str) -> bool:
    """True for a non-empty string of printable ASCII without spaces (what a bearer token may hold)."""
    return bool(text) and all(33 <= ord(c) <= 126 for c in text)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(mtime_ns, size, inode) of a security file, whose change means a rotation; None if it cannot be stat'ed."""
    try:
        st = os.stat(path)  # follows the symlinks of a mounted Kubernetes secret, which swap on update
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@dataclass(frozen=True)
class SecurityConfig:
    """Who may call charlm.v1 (bearer tokens) and how the port is served (plaintext, TLS or mutual TLS)."""

    auth_token: str = field(default="", repr=False)  # "" = none; kept out of the repr, so out of any log line
    auth_token_file: Path | None = None  # one token per line, re-read when it changes (rotation)
    tls_cert: Path | None = None  # PEM certificate chain served on the gRPC port (with tls_key)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # PEM CA(s): clients must present a certificate they signed (mutual TLS)

    def __post_init__(self) -> None:
        if self.auth_token and not visible_ascii(self.auth_token):
            raise ValueError("auth_token: must be printable ASCII without spaces")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"{missing}: TLS needs both a certificate (tls_cert) and its private key (tls_key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_cert: client certificates (tls_client_ca) need the server's own TLS certificate")

    @property
    def auth(self) -> bool:
        """True when calls need a bearer token."""
        return bool(self.auth_token) or self.auth_token_file is not None


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `charlm-serve` needs: network, models, runtime, engine, limits, sessions, logging."""

    model_repo: Path = Path("models")
    default_model: str = ""  # "" = "shakespeare" when served, else the first model
    versions: int = 1  # the newest versions of each model name to serve (0 = all), as TF Serving and Triton do
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = an ephemeral port
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9090  # 0 = an ephemeral port, -1 = no metrics endpoint
    grace_seconds: float = 10.0  # on SIGTERM, how long in-flight streams may run before they are cancelled
    reflection: bool = True
    log_format: LogFormat = "logfmt"
    log_level: str = "INFO"
    access_log: bool = False  # a line per finished RPC (logger service.access)
    # glibc's malloc gives each new thread an arena of its own, up to 8 per core. With 2 for all the server's
    # threads (event loop, lanes, gRPC's, onnxruntime's), a 256-stream soak ended 2-16 MiB lower in six
    # alternated pairs, no slower (docs/performance.md). 0 = glibc's own
    malloc_arenas: int = 2
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: Limits = field(default_factory=Limits)
    sessions: SessionConfig = field(default_factory=SessionConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    # An HTTP/2 connection lives this long (gRPC adds +-10% jitter), then is told to go away (GOAWAY) and the
    # client reconnects: behind an L4 load balancer, connections otherwise never move to new replicas. 0 = off
    max_connection_age_seconds: float = 0.0
    # How long the calls in flight on such a connection may still run; 0 = until they end (Chat may run long)
    max_connection_age_grace_seconds: float = 0.0
    # Requests for new Generate calls kept pending besides grpc.aio's own one, so that a burst of calls is handed
    # to the server together rather than one turn of its event loop each (service/accept.py). 0 = grpc.aio's alone
    accept_slots: int = 16

    def __post_init__(self) -> None:
        if self.versions < 0:
            raise ValueError(f"versions: must be >= 0, got {self.versions}")
        if self.malloc_arenas < 0:
            raise ValueError(f"malloc_arenas: must be >= 0, got {self.malloc_arenas}")
        if not 0 <= self.accept_slots <= 1024:  # each is a task and a request held in gRPC's core
            raise ValueError(f"accept_slots: must be 0..1024, got {self.accept_slots}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be 0..65535 (0 = any free port), got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port: must be 0..65535 (0 = any free port) or -1 (off), got {self.metrics_port}")
        for name in ("grace_seconds", "max_connection_age_seconds", "max_connection_age_grace_seconds"):
            if not 0 <= getattr(self, name) < float("inf"):  # (also refuses nan)
                raise ValueError(f"{name}: must be a finite number >= 0, got {getattr(self, name)}")
