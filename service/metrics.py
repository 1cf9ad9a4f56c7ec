"""Prometheus metrics of one server, in its own CollectorRegistry (several servers may share a test process)."""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

# Engine steps of a char-level RNN take tens of microseconds; requests take milliseconds to minutes.
_STEP_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TTFC_BUCKETS = (5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A unary call takes ~1 ms; a stream up to minutes (65536 characters, slower as more streams share a lane), a Chat
# as long as its client keeps it open: one set of buckets from 0.5 ms to 10 minutes, +Inf beyond.
_REQUEST_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0)


class Metrics:
    """Request, engine and session metrics; implements types.EngineObserver and sessions.SessionObserver."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # What the default registry has: process_* (memory, CPU, fds), python_info, python_gc_*
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)  # (registers nothing where the interpreter lacks gc.get_stats)
        self.requests = Counter("charlm_requests", "Finished RPCs by method and status code.", ["rpc", "code"],
                                registry=r)
        self.generated = Counter("charlm_chars_generated", "Characters generated.", ["model"], registry=r)
        self.active_streams = Gauge("charlm_active_streams", "Generate, Feed and Chat streams in progress.",
                                    registry=r)
        self.batch_size = Histogram("charlm_batch_size", "Streams advanced per engine step.", ["model"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.step_seconds = Histogram("charlm_step_seconds", "Engine step latency (one onnxruntime call).",
                                      ["model"], buckets=_STEP_BUCKETS, registry=r)
        self.ttfc_seconds = Histogram("charlm_time_to_first_char_seconds",
                                      "From request arrival to its first generated character.", ["model"],
                                      buckets=_TTFC_BUCKETS, registry=r)
        self.active_sessions = Gauge("charlm_active_sessions", "Live sessions.", registry=r)
        self.session_state_bytes = Gauge("charlm_session_state_bytes", "Bytes of hidden state held by sessions.",
                                         registry=r)
        self.sessions_removed = Counter("charlm_sessions_removed", "Sessions removed, by reason.", ["reason"],
                                        registry=r)
        self.request_seconds = Histogram("charlm_request_seconds", "Duration of finished RPCs by method.", ["rpc"],
                                         buckets=_REQUEST_BUCKETS, registry=r)
        self.draining = Gauge("charlm_draining", "1 once the server has begun draining (SIGTERM), else 0.",
                              registry=r)
        self.lane_plan = {  # (service/tuning.py) the engine's choices, measured at start on this machine or set
            "lanes": Gauge("charlm_lanes", "Engine lanes (decode batches side by side, one step thread each).",
                           ["model"], registry=r),
            "all_threads_rows": Gauge("charlm_lane_all_threads_rows", "Rows from which a lane stepping alone "
                                      "decodes on all of onnxruntime's threads.", ["model"], registry=r),
            "lane_fill": Gauge("charlm_lane_fill", "Streams a lane takes before the next lane gets any.", ["model"],
                               registry=r),
            "decode_int8": Gauge("charlm_decode_int8", "1 where the decode steps run in int8 (--decode-precision).",
                                 ["model"], registry=r),
            "prompt_int8": Gauge("charlm_prompt_int8", "1 where the prompt calls run in int8 (--prompt-precision).",
                                 ["model"], registry=r),
        }
        self._step_children: dict[str, tuple[Any, Any, Any]] = {}  # model -> batch, step, chars children
        self._ttfc_children: dict[str, Any] = {}  # model -> its time-to-first-char histogram
        self._request_children: dict[tuple[str, str], Any] = {}  # (rpc, code) -> its counter
        self._seconds_children: dict[str, Any] = {}  # rpc -> its duration histogram
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # types.EngineObserver: called from the engine's step loop, so each is one cheap update. Labelled children
    # are looked up once per label set, here and in `request`: `labels()` costs more than the update itself.
    def step(self, model: str, batch: int, seconds: float) -> None:
        """One engine step of ``batch`` streams took ``seconds``."""
        children = self._step_children.get(model)
        if children is None:
            children = self._step_children[model] = (self.batch_size.labels(model),
                                                      self.step_seconds.labels(model),
                                                      self.generated.labels(model))  # fmt: skip
        children[0].observe(batch)
        children[1].observe(seconds)

    def chars(self, model: str, n: int) -> None:
        """``n`` characters were generated."""
        children = self._step_children.get(model)
        (children[2] if children is not None else self.generated.labels(model)).inc(n)

    def first_char(self, model: str, seconds: float) -> None:
        """A request produced its first character ``seconds`` after it arrived."""
        child = self._ttfc_children.get(model)
        if child is None:
            child = self._ttfc_children[model] = self.ttfc_seconds.labels(model)
        child.observe(seconds)

    def lanes(self, model: str, lanes: int, all_threads_rows: int, lane_fill: int, precision: str,
              prompt_precision: str) -> None:  # fmt: skip
        """The engine's lanes, how it shares streams among them and its precisions (set once, at start)."""
        plan = (("lanes", lanes), ("all_threads_rows", all_threads_rows), ("lane_fill", lane_fill),
                ("decode_int8", int(precision == "int8")),
                ("prompt_int8", int(prompt_precision == "int8")))  # fmt: skip
        for name, value in plan:
            self.lane_plan[name].labels(model).set(value)

    # sessions.SessionObserver
    def sessions(self, active: int, state_bytes: int) -> None:
        """The session store's size."""
        self.active_sessions.set(active)
        self.session_state_bytes.set(state_bytes)

    def session_gone(self, reason: str) -> None:
        """A session was expired, evicted or deleted."""
        self.sessions_removed.labels(reason).inc()

    def streams(self, active: int) -> None:
        """``active`` streams are in progress."""
        self.active_streams.set(active)

    def request(self, rpc: str, code: str, seconds: float | None) -> None:
        """An RPC finished with status ``code`` (e.g. "OK", "NOT_FOUND") after ``seconds`` (None: refused before
        it ran, e.g. UNAUTHENTICATED, and not timed: a flood of them would drag the histogram to 0)."""
        child = self._request_children.get((rpc, code))
        if child is None:
            child = self._request_children[rpc, code] = self.requests.labels(rpc, code)
        child.inc()
        if seconds is None:
            return
        histogram = self._seconds_children.get(rpc)
        if histogram is None:
            histogram = self._seconds_children[rpc] = self.request_seconds.labels(rpc)
        histogram.observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serves /metrics over HTTP on a background thread; returns the bound port (port 0 = ephemeral)."""
        self._http, self._thread = start_http_server(port, host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stops the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
