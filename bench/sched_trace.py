"""What a load's idle cores wait on: the kernel's scheduler trace of a level, phase by phase.

``bench.timeline`` finds the cores partly idle in a level's start and end while the threads wait, ready, for a
core. This records the kernel's ``sched_switch``, ``sched_waking``, ``sched_wakeup`` and ``sched_migrate_task``
events during each round (tracefs, its clock CLOCK_MONOTONIC so that the events line up with the load's
``perf_counter``; needs root) and splits each CPU's idle time by what was ready to run meanwhile:

- **woken here**: a thread being woken onto this CPU (its wake-up under way, or queued here while the idle CPU
  has not yet switched to it): the time an idle vCPU takes to wake;
- **ready there**: a thread queued behind another on the other CPU, not moved to the idle one (placement);
- **nothing**: no thread ready to run on a busy CPU: the threads wait for each other, a lock or the network.

Each group's ready-but-not-running time is split the same way (while a core sat idle, or while none did), and
each stretch in which a thread stayed ready on a busy CPU while another idled is an episode: how many, how long,
and whether the thread got there preempted or woken. With ``--wakers`` it also counts, per phase, who woke whom
(the thread running when a wake-up began).

    python -m bench.sched_trace --streams 64 --chars 2000 --rounds 3 [--wakers] [--server-arg=--FLAG=VALUE]  # as root
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
from collections.abc import Iterator
from pathlib import Path

from bench.engine import parser
from bench.server_proc import ServerProcess
from bench.timeline import phases, served
from client.loadgen import LoadReport, run_load

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("sched_switch", "sched_waking", "sched_wakeup", "sched_migrate_task")
LINE = re.compile(r"^\s*.+?-(\d+)\s+\(\s*[\d-]+\)\s+\[(\d+)\]\s+\S+\s+(\d+\.\d+): (\w+): (.*)$")
FIELD = re.compile(r"\b(prev_pid|prev_state|next_pid|pid|target_cpu|dest_cpu)=(\S+)")
IDLE = ("woken here", "ready there", "nothing")
GROUPS = ("loop", "server", "client", "other")
SETTINGS = ("tracing_on", "buffer_size_kb", "options/record-tgid")  # besides trace_clock, as found before a run


class Tracer:
    """The kernel's scheduler events through tracefs, on only while a round runs."""

    def __init__(self, buffer_kb: int) -> None:
        if not (TRACEFS / "trace").exists():
            raise SystemExit(f"no tracefs at {TRACEFS}: as root, `mount -t tracefs nodev {TRACEFS}`")
        clock = re.search(r"\[(\w+)\]", (TRACEFS / "trace_clock").read_text())
        self._before = {name: (TRACEFS / name).read_text().split()[0] for name in SETTINGS}  # put back by close()
        self._before["trace_clock"] = clock.group(1) if clock else "local"
        self._write("tracing_on", "0")
        self._write("trace_clock", "mono")  # CLOCK_MONOTONIC, as time.perf_counter()
        self._write("buffer_size_kb", str(buffer_kb))
        self._write("options/record-tgid", "1")  # each thread's process, for saved_tgids
        for event in EVENTS:
            self._write(f"events/sched/{event}/enable", "1")

    def _write(self, name: str, value: str) -> None:
        (TRACEFS / name).write_text(value)

    def start(self) -> None:
        """Clears the buffer and starts recording."""
        self._write("trace", "")
        self._write("tracing_on", "1")

    def stop(self) -> tuple[list[str], int, dict[int, int]]:
        """Stops recording: the events' lines, how many were lost to a full buffer, and thread -> process."""
        self._write("tracing_on", "0")
        lost = sum(int(m.group(1)) for f in TRACEFS.glob("per_cpu/cpu*/stats")
                   for m in re.finditer(r"^overrun: (\d+)", f.read_text(), re.M))  # fmt: skip
        pairs = (x.split() for x in (TRACEFS / "saved_tgids").read_text().splitlines())
        tgids = {int(tid): int(tgid) for tid, tgid in pairs}
        return (TRACEFS / "trace").read_text().splitlines(), lost, tgids

    def close(self) -> None:
        """Turns the events off and puts tracefs's settings back as they were."""
        for event in EVENTS:
            self._write(f"events/sched/{event}/enable", "0")
        self._write("trace", "")
        for name, value in reversed(self._before.items()):  # tracing_on last
            self._write(name, value)


def events(lines: list[str]) -> Iterator[tuple[float, int, int, str, dict[str, str]]]:
    """(time, the running thread, its CPU, event, fields) for each event line."""
    for line in lines:
        if (m := LINE.match(line)) is not None:
            yield float(m.group(3)), int(m.group(1)), int(m.group(2)), m.group(4), dict(FIELD.findall(m.group(5)))


class Sweep:
    """The scheduler's state event by event, its times summed into the windows asked for."""

    def __init__(self, windows: list[tuple[float, float]], group_of: dict[int, str]) -> None:
        self.windows, self.group_of = windows, group_of
        self.running: dict[int, int] = {}  # cpu -> tid running (0: idle)
        self.ready: dict[int, tuple[int, str]] = {}  # tid -> (cpu queued on, -1 while its wake-up is under way; how)
        self.idle = [dict.fromkeys(IDLE, 0.0) for _ in windows]
        self.waiting = [{(g, i): 0.0 for g in GROUPS for i in (True, False)} for _ in windows]
        self.wakers: list[collections.Counter[tuple[str, str]]] = [collections.Counter() for _ in windows]
        self.episodes: list[list[tuple[float, str]]] = [[] for _ in windows]  # (seconds, how) of each "ready there"
        self._there: dict[int, tuple[float, str]] = {}  # tid -> (since when it has been ready there, how)
        self.t = 0.0

    def run(self, lines: list[str]) -> None:
        """Sweeps the events in time order."""
        for t, tid, cpu, event, f in events(lines):
            if self.t:
                self._account(self.t, t)
            self.t = t
            self._apply(tid, cpu, event, f)
            self._track()

    def _apply(self, tid: int, cpu: int, event: str, f: dict[str, str]) -> None:
        if event == "sched_switch":
            prev, nxt = int(f["prev_pid"]), int(f["next_pid"])
            self.running[cpu] = nxt
            self.ready.pop(nxt, None)
            if prev and f["prev_state"].startswith("R"):  # preempted: still ready, queued here
                self.ready[prev] = (cpu, "preempted")
        elif event == "sched_waking":
            woken = int(f["pid"])
            if woken not in self.running.values() and woken not in self.ready:
                self.ready[woken] = (-1, "woken")
                if (k := self._window(self.t)) is not None:
                    self.wakers[k][(self._group(tid), self._group(woken))] += 1
        elif event in ("sched_wakeup", "sched_migrate_task"):
            woken = int(f["pid"])
            if woken in self.ready:
                self.ready[woken] = (int(f.get("target_cpu") or f["dest_cpu"]), self.ready[woken][1])

    def _window(self, t: float) -> int | None:
        return next((k for k, (t0, t1) in enumerate(self.windows) if t0 <= t < t1), None)

    def _group(self, tid: int) -> str:
        return self.group_of.get(tid, "other")

    def _there_now(self) -> set[int]:
        """The ready threads queued on a busy CPU while another CPU idles."""
        idle = {c for c, tid in self.running.items() if tid == 0}
        return {t for t, (c, _) in self.ready.items() if c >= 0 and c not in idle and idle} if idle else set()

    def _track(self) -> None:
        now = self._there_now()
        for tid in set(self._there) - now:
            since, how = self._there.pop(tid)
            if (k := self._window(since)) is not None and self.t > since:  # (not queued and run at one instant)
                self.episodes[k].append((self.t - since, how))
        for tid in now - set(self._there):
            self._there[tid] = (self.t, self.ready[tid][1])

    def _account(self, t0: float, t1: float) -> None:
        for k, (w0, w1) in enumerate(self.windows):
            dt = min(t1, w1) - max(t0, w0)
            if dt <= 0:
                continue
            idle = [c for c, tid in self.running.items() if tid == 0]
            queued = {c for c, _ in self.ready.values()}
            for c in idle:
                busy_queue = any(q >= 0 and q not in idle for q in queued)
                kind = "woken here" if c in queued or -1 in queued else "ready there" if busy_queue else "nothing"
                self.idle[k][kind] += dt
            for tid in self.ready:
                self.waiting[k][(self._group(tid), bool(idle))] += dt


def groups(tgids: dict[int, int], server_pid: int) -> dict[int, str]:
    """Thread id -> group: the server's event loop (its main thread), its other threads, this process's."""
    out = {tid: "server" if tgid == server_pid else "client" for tid, tgid in tgids.items()
           if tgid in (server_pid, os.getpid())}  # fmt: skip
    out[server_pid] = "loop"
    return out


Round = tuple[LoadReport, Sweep, int]  # the load, its sweep, the events lost


async def rounds(server: ServerProcess, a: argparse.Namespace, prompt: str, model: str) -> list[Round]:
    """``a.rounds`` loads of ``a.streams`` x ``a.chars``, each traced on its own."""
    tracer, out = Tracer(a.buffer_kb), []
    try:
        await run_load(server.target, a.streams, 200, prompt, model=model, seed=0)
        for i in range(a.rounds):
            tracer.start()
            await asyncio.sleep(0.05)
            r = await run_load(server.target, a.streams, a.chars, prompt, model=model,
                               temperature=1.0, seed=i * 1000)  # fmt: skip
            await asyncio.sleep(0.02)
            lines, lost, tgids = tracer.stop()
            sweep = Sweep([(t0, t1) for _, t0, t1 in phases(r)], groups(tgids, server.pid))
            sweep.run(lines)
            out.append((r, sweep, lost))
    finally:
        tracer.close()
    return out


def cells(s: Sweep, k: int, seconds: float) -> dict[object, float]:
    """Window ``k``'s idle kinds and groups' ready time (group, while a core sat idle), in cores."""
    return {**{i: v / seconds for i, v in s.idle[k].items()}, **{g: v / seconds for g, v in s.waiting[k].items()}}


def episodes(got: list[tuple[float, str]], rounds: int) -> str:
    """How long a thread stayed ready on a busy CPU while another idled: counts a round, p50, the long ones."""
    if not got:
        return "none"
    ms = sorted(d * 1e3 for d, _ in got)
    long = [(d * 1e3, how) for d, how in got if d >= 1e-3]
    share = sum(how == "preempted" for _, how in long) / len(long) if long else 0.0
    return (
        f"{len(got) / rounds:.0f} episodes a round, p50 {ms[len(ms) // 2] * 1e3:.0f} µs; {len(long) / rounds:.1f} "
        f"a round of 1 ms or more ({sum(d for d, _ in long) / rounds:.1f} ms a round, {share:.0%} of them threads "
        f"preempted there, the rest woken there), the longest {ms[-1]:.1f} ms"
    )


def report(results: list[Round], wakers: int) -> list[str]:
    """Per phase, medians over the rounds of the idle cores by what was ready, and the groups' ready time."""
    r0 = results[0][0]
    lines = [f"{len(results)} rounds of {r0.streams} streams x {r0.chars_per_stream} characters: "
             + ", ".join(f"{r.chars_per_s:,.0f}" for r, _, _ in results) + " chars/s; events lost: "
             + ", ".join(str(lost) for _, _, lost in results),
             "medians over the rounds, in cores (seconds a second). Idle: woken here / ready there / nothing. "
             "Ready, not running, while a core sat idle / while none did:",
             f"{'phase':>14} {'ms':>5} {'idle cores':>20}  " + "  ".join(f"{g:>11}" for g in GROUPS)]  # fmt: skip
    for k, name in enumerate(("start", "all streaming", "end")):
        spans = [phases(r)[k] for r, _, _ in results]
        lengths = [max(t1 - t0, 1e-9) for _, t0, t1 in spans]
        cores = [cells(s, k, n) for (_, s, _), n in zip(results, lengths, strict=True)]
        med = {key: statistics.median(c[key] for c in cores) for key in cores[0]}
        idle = "/".join(f"{med[i]:.2f}" for i in IDLE)
        ready = [f"{med[(g, True)]:.2f}/{med[(g, False)]:.2f}" for g in GROUPS]
        lines.append(f"{name:>14} {statistics.median(lengths) * 1e3:5.0f} {idle:>20}  "
                     + "  ".join(f"{c:>11}" for c in ready))  # fmt: skip
    for k, name in enumerate(("start", "all streaming", "end")):
        lines.append(f"ready there in the {name}: " + episodes([e for _, s, _ in results for e in s.episodes[k]],
                                                                len(results)))  # fmt: skip
    if wakers:
        for k, name in enumerate(("start", "all streaming", "end")):
            total: collections.Counter[tuple[str, str]] = sum((s.wakers[k] for _, s, _ in results),
                                                              collections.Counter())  # fmt: skip
            top = ", ".join(f"{a}->{b} {n / len(results):.0f}" for (a, b), n in total.most_common(wakers))
            lines.append(f"wake-ups a round in the {name}, waker->woken: {top}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = parser(__doc__)
    p.add_argument("--streams", type=int, default=64, help="concurrent streams of a round")
    p.add_argument("--chars", type=int, default=2000, help="characters each stream generates")
    p.add_argument("--rounds", type=int, default=3, help="loads, one after another, each traced")
    p.add_argument("--buffer-kb", type=int, default=65536, help="tracefs's buffer a CPU, in KiB")
    p.add_argument("--wakers", type=int, nargs="?", const=8, default=0,
                   help="print the N most frequent waker->woken pairs a phase (8 when no N)")  # fmt: skip
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m service` (repeatable)")  # fmt: skip
    a = p.parse_args(argv)
    if a.streams < 1 or a.chars < 1 or a.rounds < 1 or a.buffer_kb < 1:
        p.error("--streams, --chars, --rounds and --buffer-kb must be positive")
    if os.geteuid() != 0:
        p.error("the kernel's trace needs root")
    print("\n".join(report(served(p, a, rounds), a.wakers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
