"""What waking a thread on another, idle vCPU costs: a pipe's round trip between two processes, side by side.

A first character crosses threads of both processes, and on a VM whose idle vCPUs halt at once (cpuidle
``haltpoll`` with ``guest_halt_poll_ns=0``) a thread woken on a halted vCPU waits for the host to run that vCPU
again (docs/deployment.md, "Latency on VMs whose idle vCPUs halt"). This measures it: a one-byte round trip
through two pipes between two processes, pinned to the same vCPU, to two, and to two kept awake by a busy loop on
each at ``SCHED_IDLE`` (which runs only when nothing else wants the vCPU), in alternated rounds, the trips
``--gap-ms`` apart. Each trip wakes the other process twice; "across" minus "across, kept awake" is what the
halts add to those two wake-ups. The busy loops burn the host's CPU, which is why the server runs none. A last
line gives what a null system call costs and the kernel's mitigations that make it cost more (retpolines, SRSO's
"Safe RET"): gRPC's hand-offs are system calls, so a VM whose kernel pays more for each pays more for a call.

    python -m bench.wakeup --rounds 3 --trips 400 [--gap-ms 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
import timeit
from pathlib import Path

from client.loadgen import percentile

IDLE = ("/sys/devices/system/cpu/cpuidle/current_driver", "/sys/module/haltpoll/parameters/guest_halt_poll_ns")
VULNERABILITIES = Path("/sys/devices/system/cpu/vulnerabilities")


def round_trips(cpus: tuple[int, int], trips: int, gap_s: float) -> list[float]:
    """Seconds of each of ``trips`` round trips from a process on cpus[0] to a child on cpus[1] and back."""
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child echoes each byte until it reads "q", or the end of a pipe whose writer died
        try:
            os.close(from_parent)
            os.close(to_parent)
            os.sched_setaffinity(0, {cpus[1]})
            while (b := os.read(to_child, 1)) not in (b"q", b""):
                os.write(from_child, b)
        finally:
            os._exit(0)
    os.close(to_child)
    os.close(from_child)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    out = []
    try:
        os.write(from_parent, b"x")  # one trip first: the child is running and pinned
        os.read(to_parent, 1)
        for _ in range(trips):
            if gap_s:
                time.sleep(gap_s)
            start = time.perf_counter()
            os.write(from_parent, b"x")
            os.read(to_parent, 1)
            out.append(time.perf_counter() - start)
    finally:
        os.write(from_parent, b"q")
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, before)
        os.close(from_parent)
        os.close(to_parent)
    return out


def spinners(cpus: list[int]) -> list[int]:
    """Start a busy loop at ``SCHED_IDLE`` pinned to each of ``cpus``; their pids. Each ends when this process
    does, even killed (its parent changes)."""
    pids, parent = [], os.getpid()
    for cpu in cpus:
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {cpu})
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            while os.getppid() == parent:
                pass
            os._exit(0)
        pids.append(pid)
    return pids


def stop(pids: list[int]) -> None:
    """Kill and reap the busy loops."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def idle_settings() -> str:
    """The machine's cpuidle driver and haltpoll's guest polling, where it has them."""
    found = [f"{Path(p).name} {Path(p).read_text().strip()}" for p in IDLE if Path(p).exists()]
    return ", ".join(found) or "no cpuidle driver or haltpoll found"


def syscall_ns(calls: int = 200_000) -> float:
    """ns of a null system call: ``os.getppid()`` less ``int()``, a call of the same Python cost; best of 5."""
    best = min(timeit.timeit(os.getppid, number=calls) - timeit.timeit(int, number=calls) for _ in range(5))
    return best / calls * 1e9


def mitigations() -> str:
    """The kernel's mitigations for Spectre v2 and AMD's SRSO, the two that tax every kernel entry and return."""
    found = [f"{name} {(VULNERABILITIES / name).read_text().strip()}" for name in ("spectre_v2", "spec_rstack_overflow")
             if (VULNERABILITIES / name).exists()]
    return "; ".join(found) or "none reported"


def main() -> None:
    """Alternate the ways over the rounds and print each round's p50 and p99, then the medians of the p50s."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running every way once (default 3)")
    ap.add_argument("--trips", type=int, default=400, help="round trips a way a round (default 400)")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="idle time before each trip (default 0: back to back)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("bench.wakeup needs two vCPUs")
    ways = {"same vCPU": ((cpus[0], cpus[0]), False), "across vCPUs": ((cpus[0], cpus[1]), False),
            "across, kept awake": ((cpus[0], cpus[1]), True)}  # fmt: skip
    print(f"{len(cpus)} vCPUs; {idle_settings()}; µs a round trip through two pipes, p50/p99 of {args.trips}, "
          f"{format(args.gap_ms, 'g')} ms apart")
    p50s: dict[str, list[float]] = {}
    for r in range(args.rounds):
        cells = []
        for name, (pair, awake) in ways.items():
            pids = spinners(sorted(set(pair))) if awake else []
            try:
                trips = sorted(round_trips(pair, args.trips, args.gap_ms / 1e3))
            finally:
                stop(pids)
            p50s.setdefault(name, []).append(statistics.median(trips) * 1e6)
            cells.append(f"{name} {p50s[name][-1]:.0f}/{percentile(trips, 99) * 1e6:.0f}")
        print(f"round {r + 1}: " + "; ".join(cells))
    print("medians of the rounds' p50s: " + "; ".join(f"{w} {statistics.median(v):.0f}" for w, v in p50s.items()))
    print(f"a null system call {syscall_ns():.0f} ns (getppid); {mitigations()}")


if __name__ == "__main__":
    main()
