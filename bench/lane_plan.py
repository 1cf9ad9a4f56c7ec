"""What lane plan a start of the real server picks, start after start, and what its later looks changed.

The engine times its own decode calls before it serves and picks how many streams a lane takes before the next
gets any (service/tuning.py). A busy moment slows two lanes side by side more than one lane, so it can hide a
smaller lane fill; the row counts that did not step faster spread are timed again (``tuning.LOOKS`` looks in all
at most). Each start's log names both picks: the first look's (what a start picked before later looks were built)
and the one kept.

``--busy-ms`` starts a process that burns a core in bursts (``--busy-ms`` of every ``--every-ms``) during every
other start, so the picks with and without it come side by side; without it, only what else the VM runs.

Where a start kept a lane fill above 2, the engine looks again while idle (service/idle_looks.py): ``--idle-s``
leaves each started server idle that long (the burner stopped) and counts what those looks changed.

    python -m bench.lane_plan --starts 20 [--busy-ms 40 --every-ms 200] [--idle-s 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.server_proc import IDLE_LOOK, ServerError, ServerProcess
from service.artifact import ArtifactError, load_artifact

PICK = re.compile(r"measured in ([\d.]+) s: all threads from (\d+) rows, lane fill (\d+) \(first look: (\d+)\)")
IDLE = re.compile(IDLE_LOOK + r" in [\d.]+ s \(rows [^)]*\): lane fill (\d+) \(was \d+\)")


@dataclass(frozen=True)
class Start:
    """One start's plan: seconds measuring, all threads from ``rows``, the lane fill kept and the first look's."""

    busy: bool
    seconds: float
    rows: int
    fill: int
    first_fill: int
    timings: str
    idle_fills: tuple[int, ...] = ()  # the lane fill after each later look while idle

    @property
    def served_fill(self) -> int:
        """The lane fill the server serves by after its looks while idle."""
        return self.idle_fills[-1] if self.idle_fills else self.fill


def parse(record: dict[str, Any], busy: bool) -> Start:
    """A start's "lanes measured" log record as a ``Start``."""
    m = PICK.search(str(record.get("msg", "")))
    if m is None:
        raise ValueError(f"not a lane plan with its first look (a server from before it?): {record.get('msg')}")
    return Start(busy, float(m[1]), int(m[2]), int(m[3]), int(m[4]), str(record.get("timings_us", "")))


def burn(stop: Any, busy_s: float, every_s: float) -> None:
    """Spins for ``busy_s`` of every ``every_s`` until ``stop`` is set (another tenant on a core, now and then)."""
    while not stop.is_set():
        end = time.perf_counter() + busy_s
        while time.perf_counter() < end:
            pass
        time.sleep(max(0.0, every_s - busy_s))


def start_once(repo: Path, args: list[str], busy: tuple[float, float] | None, idle_s: float = 0.0) -> Start:
    """Starts the server (with the burner running, when ``busy``), reads its plan, leaves it idle ``idle_s``
    seconds (the burner stopped), reads what its later looks changed, stops it."""
    stop = mp.Event()
    burner = None if busy is None else mp.Process(target=burn, args=(stop, *busy), daemon=True)
    if burner is not None:
        burner.start()
    try:
        with ServerProcess(repo, args) as server:
            records = server.lane_records()
            stop.set()
            time.sleep(idle_s)
            looked = tuple(int(f) for f in IDLE.findall(server.log_text()))
    finally:
        stop.set()
        if burner is not None:
            burner.join()
    if not records:
        raise ValueError("the server measured no lanes (one lane on one thread, a device, or both set)")
    return replace(parse(records[0], busy is not None), idle_fills=looked)


def summary(starts: list[Start]) -> list[str]:
    """Lane fills picked, first look against kept, and what the looks while idle changed, for the starts with and
    without the burner."""
    lines = []
    for busy in (False, True):
        group = [s for s in starts if s.busy == busy]
        if group:
            first = Counter(s.first_fill for s in group)
            kept = Counter(s.fill for s in group)
            looked = [s for s in group if s.idle_fills]
            served = Counter(s.served_fill for s in group)
            lines.append(f"{'with' if busy else 'without'} the burner, {len(group)} starts: lane fill at the first "
                         f"look {dict(sorted(first.items()))}, kept {dict(sorted(kept.items()))}; later looks changed "
                         f"{sum(s.fill != s.first_fill for s in group)}; measured in "
                         f"{min(s.seconds for s in group):.2f}-{max(s.seconds for s in group):.2f} s; looked again "
                         f"while idle in {len(looked)} starts ({sum(len(s.idle_fills) for s in looked)} looks), "
                         f"lowering the fill in {sum(s.served_fill < s.fill for s in looked)}; served by "
                         f"{dict(sorted(served.items()))}")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lane_plan", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/shakespeare/1"),
                   help="artifact version folder REPO/NAME/VERSION (the server serves REPO, this model by default)")
    p.add_argument("--starts", type=int, default=20, help="server starts in all")
    p.add_argument("--busy-ms", type=float, default=0.0, help="the burner's bursts (0 = no burner)")
    p.add_argument("--every-ms", type=float, default=200.0, help="one burst this often")
    p.add_argument("--idle-s", type=float, default=0.0,
                   help="seconds each server is left idle after its start, for its later looks (0 = none)")
    p.add_argument("--server-arg", action="append", default=[], help="one more server flag (repeatable)")
    a = p.parse_args(argv)  # fmt: skip
    try:
        info = load_artifact(a.model).info  # (the model's name and version as its artifact gives them)
    except ArtifactError as e:
        p.error(str(e))
    args = ["--default-model", f"{info.name}:{info.version}", *a.server_arg]
    starts = []
    for i in range(a.starts):
        busy = (a.busy_ms / 1e3, a.every_ms / 1e3) if a.busy_ms and i % 2 else None
        try:
            s = start_once(a.model.parent.parent, args, busy, a.idle_s)
        except (ServerError, ValueError) as e:
            print(f"error: {e}")
            return 2
        starts.append(s)
        idle = f", then {' '.join(map(str, s.idle_fills))} while idle" if s.idle_fills else ""
        print(f"start {i + 1:2d}{' (burner)' if s.busy else ''}: lane fill {s.fill} (first look {s.first_fill}){idle}, "
              f"all threads from {s.rows} rows, {s.seconds:.2f} s; {s.timings}", flush=True)  # fmt: skip
    print("\n".join(summary(starts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
