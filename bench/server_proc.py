"""The real server as a child process (its own interpreter and GIL, as in production) for the serving benchmarks.

    with ServerProcess(Path("models")) as server:
        ... run_load(server.target, ...) ...; server.rss_kib()
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

IDLE_LOOK = "lanes looked at again while idle"  # (service/idle_looks.py's log line)
IDLE_MARK = "while idle: "  # before each later look in lane_plan(), which bench/serve_summary.py reads


class ServerError(RuntimeError):
    """The server process did not start or died."""


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size (VmRSS, KiB) of process ``pid`` (this one by default) from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ServerError(f"/proc/{pid}/status has no VmRSS line")


class ServerProcess:
    """``python -m service`` on 127.0.0.1 with ephemeral ports (gRPC, /metrics); JSON logs go to a temporary file."""

    def __init__(self, model_repo: Path, extra_args: Sequence[str] = (), start_timeout: float = 60.0,
                 cwd: Path | None = None) -> None:  # fmt: skip
        self.model_repo = model_repo.resolve()
        self.cwd = cwd  # where `python -m service` runs: another checkout's service/ for a before/after run
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.port = 0
        self.metrics_port = 0  # the server's /metrics (0 = none: a checkout whose log does not name it)
        fd, name = tempfile.mkstemp(prefix="charlm-bench-server-", suffix=".log")
        os.close(fd)
        self._log_path = Path(name)
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: ThreadStats | None = None  # the server's threads' schedstat files (waiting_seconds)

    @property
    def target(self) -> str:
        """host:port for the client."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self) -> ServerProcess:
        """Starts the server and waits until its log says it serves (the bound port comes from that line)."""
        cmd = [sys.executable, "-m", "service", "--model-repo", str(self.model_repo), "--host", "127.0.0.1",
               "--port", "0", "--metrics-port", "0", "--log-format", "json", *self.extra_args]  # fmt: skip
        with self._log_path.open("wb") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=self.cwd)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = self.log_text()
                self.stop()  # (removes the log: the error carries it)
                raise ServerError(f"the server exited with status {self._proc.returncode}:\n{text}")
            for line in self.log_text().splitlines():
                port, metrics_port = _ports_of(line)
                if port:
                    self.port, self.metrics_port = port, metrics_port
                    return self
            time.sleep(0.05)
        text = self.log_text()
        self.stop()
        raise ServerError(f"the server did not start within {self.start_timeout:g}s:\n{text}")

    def lane_plan(self) -> str:
        """What the server's engines measured, as its log put it: "all threads from 16 rows, lane fill 4 (first
        look: 4)" per model at start, then "while idle: lane fill 2 (was 8)" per later look (service/idle_looks.py),
        "; " between them; "" where nothing was measured."""
        return "; ".join((IDLE_MARK if IDLE_LOOK in str(r["msg"]) else "") + str(r["msg"]).split(": ", 2)[-1]
                         for r in self.lane_records(later=True))  # fmt: skip

    def lane_records(self, later: bool = False) -> list[dict[str, Any]]:
        """The log records of what the server's engines measured at start (service/tuning.py), one per model;
        ``later``: and of their later looks while idle."""
        records = (_record(line) for line in self.log_text().splitlines())
        return [r for r in records if "lanes measured in" in str(r.get("msg", ""))
                or (later and IDLE_LOOK in str(r.get("msg", "")))]  # fmt: skip

    def log_text(self) -> str:
        """Everything the server logged so far."""
        return self._log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """Resident set size (VmRSS, KiB) from /proc/PID/status."""
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used (from /proc/PID/stat)."""
        return proc_cpu_seconds(Path(f"/proc/{self.pid}/stat"))

    def loop_cpu_seconds(self) -> float:
        """User + system CPU time of the server's main thread: its event loop, where gRPC's messages are made and
        handled (from /proc/PID/task/PID/stat; the step threads and gRPC's poller are threads of their own)."""
        return proc_cpu_seconds(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))

    def waiting_seconds(self) -> tuple[float, float]:
        """Seconds the server's threads have spent runnable but waiting for a core: its main thread's (the event
        loop) and its other threads' together (the step threads, gRPC's poller), from /proc schedstat (a thread
        that has ended no longer counts); NaN where the kernel keeps none."""
        if self._threads is None:
            self._threads = ThreadStats(self.pid)
        split = self._threads.read()
        if split is None:
            return math.nan, math.nan
        (_, main), (_, other) = split
        return main / 1e9, other / 1e9

    def decode_counters(self) -> DecodeCounters | None:
        """The server's decode calls so far, from its /metrics (None when it serves none)."""
        if not self.metrics_port:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:  # (a loopback URL of our own child)
            text = r.read().decode()
        sums = {"charlm_step_seconds_sum": 0.0, "charlm_batch_size_sum": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in sums:
                    sums[sample.name] += sample.value  # (every model's)
        return DecodeCounters(sums["charlm_step_seconds_sum"], sums["charlm_batch_size_sum"])

    def stop(self) -> int | None:
        """SIGTERM (a graceful drain), then SIGKILL after 15 s; returns the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log_path.unlink(missing_ok=True)
        if self._threads is not None:
            self._threads.close()
        return self._proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class DecodeCounters:
    """Totals of the server's decode calls (its metrics charlm_step_seconds and charlm_batch_size): the seconds
    its calls took, and the rows they stepped (a row of a call of K steps counts K: one character computed)."""

    call_s: float
    rows_stepped: float

    def __sub__(self, before: DecodeCounters) -> DecodeCounters:
        return DecodeCounters(self.call_s - before.call_s, self.rows_stepped - before.rows_stepped)


def _ports_of(line: str) -> tuple[int, int]:
    """The bound gRPC and /metrics ports from the server's "serving ..." JSON log line; 0 for any other line."""
    record = _record(line)
    port, metrics_port = record.get("port"), record.get("metrics_port")
    return (int(port) if isinstance(port, int) and port > 0 else 0,
            int(metrics_port) if isinstance(metrics_port, int) and metrics_port > 0 else 0)  # fmt: skip


def _record(line: str) -> dict[str, Any]:
    """One JSON log line as a dict; {} for anything else."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


Split = tuple[tuple[int, int], tuple[int, int]]  # (main thread, other threads together): (ns running, ns waiting)


class ThreadStats:
    """One process's threads' /proc/PID/task/TID/schedstat (ns running, ns waiting for a core), the main thread
    apart. Each file is kept open: a reading is a pread a thread (~2 µs) and a listing of the threads (~10 µs),
    where opening every file anew took ~60 µs a thread (bench/timeline.py reads every 10 ms). A thread that ends
    keeps counting with its last reading, so that the totals never go back."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._files: dict[str, int] = {}  # tid -> an open descriptor
        self._last: dict[str, tuple[int, int]] = {}  # tid -> its latest reading
        self._ended = (0, 0)  # the latest readings of the threads that ended

    def read(self) -> Split | None:
        """The main thread's and the other threads' totals now; None when the main thread's cannot be read (no
        schedstat in this kernel)."""
        main, other, seen = None, self._ended, set()
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                fd = self._files.get(tid)
                if fd is None:
                    fd = self._files[tid] = os.open(f"/proc/{self.pid}/task/{tid}/schedstat", os.O_RDONLY)
                run, wait = map(int, os.pread(fd, 128, 0).split()[:2])
            except (OSError, ValueError):  # ended since the listing (a new thread may reuse its id: reopen)
                if (fd := self._files.pop(tid, None)) is not None:
                    os.close(fd)
                continue
            seen.add(tid)
            self._last[tid] = (run, wait)
            if tid == str(self.pid):
                main = (run, wait)
            else:
                other = (other[0] + run, other[1] + wait)
        for tid in set(self._last) - seen:  # ended: its time stays counted
            run, wait = self._last.pop(tid)
            self._ended = (self._ended[0] + run, self._ended[1] + wait)
            other = (other[0] + run, other[1] + wait)
            if (fd := self._files.pop(tid, None)) is not None:
                os.close(fd)
        return None if main is None else (main, other)

    def close(self) -> None:
        """Closes the files."""
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


def host_seconds() -> tuple[float, float]:
    """The machine's CPU seconds so far, all cores together: (idle, stolen by the host). A level that waited
    for cores the VM's host gave to others ran slower than its own work explains (/proc/stat's "cpu" line)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    return (fields[3] + fields[4]) / tick, fields[7] / tick  # idle + iowait, steal


def proc_cpu_seconds(stat: Path) -> float:
    """utime + stime of a /proc stat file, in seconds."""
    return sum(proc_times(stat))


def proc_times(stat: Path) -> tuple[float, float]:
    """(utime, stime) of a /proc stat file, in seconds: the CPU in the process's own code and in the kernel."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick
