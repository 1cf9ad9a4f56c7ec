"""Prometheus metrics of one server, in its own CollectorRegistry (several servers may share a test process)."""

from __future__ import annotations

import itertools
import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
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
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Engine steps of a char-level RNN take tens of microseconds; requests take milliseconds to minutes.
STEP_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TTFC_BUCKETS = (5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A unary call takes ~1 ms; a stream up to minutes (65536 characters, slower as more streams share a lane), a Chat
# as long as its client keeps it open: one set of buckets from 0.5 ms to 10 minutes, +Inf beyond.
_REQUEST_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0)


class ModelHistogram(Collector):
    """A histogram labelled by model that takes ``count`` equal samples in one update: a decode call of K steps
    is K samples of one batch size and one step time, and K of prometheus_client's ``observe`` (~2 µs each, a
    lock apiece) cost a lane ~30 µs of a ~1.8 ms call at 64 streams (docs/performance-history.md, the
    twenty-sixth pass)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._name, self._doc = name, documentation
        self._bounds = [*buckets, float("inf")]
        self._les = [floatToGoString(b) for b in self._bounds]
        self._counts: dict[str, list[float]] = {}  # model -> samples in each bucket (not cumulative), then the sum
        self._lock = threading.Lock()  # the lanes' step threads update it; /metrics reads it
        registry.register(self)

    def observe(self, model: str, value: float, count: int = 1) -> None:
        """``count`` samples of ``value`` for ``model``."""
        i = bisect_left(self._bounds, value)  # the first bucket whose upper bound (le) is >= value
        with self._lock:
            counts = self._counts.get(model)
            if counts is None:
                counts = self._counts[model] = [0.0] * (len(self._bounds) + 1)
            counts[i] += count
            counts[-1] += value * count

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._doc, labels=["model"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=["model"])
        with self._lock:
            snapshot = {model: list(counts) for model, counts in self._counts.items()}
        for model, counts in snapshot.items():
            buckets = zip(self._les, itertools.accumulate(counts[:-1]), strict=True)
            family.add_metric([model], list(buckets), counts[-1])
        yield family


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
        self.batch_size = ModelHistogram("charlm_batch_size", "Streams advanced per engine step.", BATCH_BUCKETS, r)
        self.step_seconds = ModelHistogram("charlm_step_seconds", "Engine step latency (one onnxruntime call, or a "
                                           "call of K steps divided by K).", STEP_BUCKETS, r)
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
        self.gc_frozen = Gauge("charlm_gc_frozen_objects", "Objects made by the start, kept out of the garbage "
                               "collector's passes (gc.freeze).", registry=r)
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
        self._chars_children: dict[str, Any] = {}  # model -> its generated-characters counter
        self._ttfc_children: dict[str, Any] = {}  # model -> its time-to-first-char histogram
        self._request_children: dict[tuple[str, str], Any] = {}  # (rpc, code) -> its counter
        self._seconds_children: dict[str, Any] = {}  # rpc -> its duration histogram
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # types.EngineObserver: called from the engine's step loop, so each is one cheap update. Labelled children
    # are looked up once per label set, here and in `request`: `labels()` costs more than the update itself.
    def step(self, model: str, batch: int, seconds: float, steps: int = 1) -> None:
        """``steps`` engine steps of ``batch`` streams took ``seconds`` each."""
        self.batch_size.observe(model, batch, steps)
        self.step_seconds.observe(model, seconds, steps)

    def chars(self, model: str, n: int) -> None:
        """``n`` characters were generated."""
        child = self._chars_children.get(model)
        if child is None:
            child = self._chars_children[model] = self.generated.labels(model)
        child.inc(n)

    def first_char(self, model: str, seconds: float) -> None:
        """A request produced its first character ``seconds`` after it arrived."""
        child = self._ttfc_children.get(model)
        if child is None:
            child = self._ttfc_children[model] = self.ttfc_seconds.labels(model)
        child.observe(seconds)

    def lanes(self, model: str, lanes: int, all_threads_rows: int, lane_fill: int, precision: str,
              prompt_precision: str) -> None:  # fmt: skip
        """The engine's lanes, how it shares streams among them and its precisions (set at start; the lane fill
        again where a later look while idle lowers it)."""
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
