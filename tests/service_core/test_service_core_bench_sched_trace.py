"""bench/sched_trace.py: a CPU's idle time split by what was ready to run, from the kernel's trace lines."""

from __future__ import annotations

import pytest

from bench.sched_trace import Sweep, episodes, events, groups

COMMS = {0: "<idle>", 300: "python", 301: "python", 500: "python"}


def _line(t: float, cpu: int, tid: int, event: str, body: str) -> str:
    tgid = "-------" if tid == 0 else f"{tid:7d}"
    return f"{COMMS[tid]:>16}-{tid:<7d} ({tgid}) [{cpu:03d}] d..2. {t:.6f}: {event}: {body}"


def _switch(t: float, cpu: int, prev: int, state: str, nxt: int) -> str:
    return _line(t, cpu, prev, "sched_switch", f"prev_comm={COMMS[prev]} prev_pid={prev} prev_prio=120 "
                 f"prev_state={state} ==> next_comm={COMMS[nxt]} next_pid={nxt} next_prio=120")  # fmt: skip


def _wake(t: float, cpu: int, waker: int, event: str, woken: int, target: int) -> str:
    return _line(t, cpu, waker, event, f"comm={COMMS[woken]} pid={woken} prio=120 target_cpu={target:03d}")


# The loop (300) runs on CPU 1 while CPU 0 goes idle; it wakes a step thread (301), which preempts it there, and
# only 2 ms later does CPU 0 take the loop. Then CPU 0 idles again until a wake-up of the client (500) lands on it.
TRACE = [
    "# tracer: nop",
    _switch(100.000, 1, 0, "R", 300),
    _switch(100.000, 0, 500, "S", 0),
    _wake(100.001, 1, 300, "sched_waking", 301, 1),
    _wake(100.001, 1, 300, "sched_wakeup", 301, 1),
    _switch(100.001, 1, 300, "R+", 301),
    _switch(100.003, 0, 0, "R", 300),
    _switch(100.004, 0, 300, "S", 0),
    _wake(100.005, 1, 301, "sched_waking", 500, 0),
    _wake(100.0055, 0, 0, "sched_wakeup", 500, 0),
    _switch(100.006, 0, 0, "R", 500),
    _switch(100.010, 1, 301, "S", 0),
]


def _sweep() -> Sweep:
    sweep = Sweep([(100.0, 100.010)], {300: "loop", 301: "server", 500: "client"})
    sweep.run(TRACE)
    return sweep


def test_trace_lines_parse_into_time_thread_cpu_event_and_fields() -> None:
    got = list(events(TRACE))
    assert len(got) == len(TRACE) - 1  # the header is no event
    t, tid, cpu, event, fields = got[4]
    assert (t, tid, cpu, event) == (100.001, 300, 1, "sched_switch")
    assert fields == {"prev_pid": "300", "prev_state": "R+", "next_pid": "301"}
    assert got[7][4] == {"pid": "500", "target_cpu": "000"}


def test_idle_time_is_split_by_what_was_ready_to_run_meanwhile() -> None:
    idle = _sweep().idle[0]
    assert idle["ready there"] == pytest.approx(0.002)  # the preempted loop queued on busy CPU 1
    assert idle["woken here"] == pytest.approx(0.001)  # the client's wake-up landing on idle CPU 0
    assert idle["nothing"] == pytest.approx(0.002)  # before the step thread's wake-up, and after the loop slept


def test_each_groups_ready_time_counts_whether_a_core_sat_idle() -> None:
    waiting = _sweep().waiting[0]
    assert waiting[("loop", True)] == pytest.approx(0.002)
    assert waiting[("client", True)] == pytest.approx(0.001)
    assert waiting[("server", True)] == waiting[("server", False)] == 0.0  # it ran as soon as it was woken


def test_a_thread_ready_on_a_busy_cpu_while_another_idles_is_one_episode_with_how_it_got_there() -> None:
    sweep = _sweep()
    assert sweep.episodes[0] == [(pytest.approx(0.002), "preempted")]
    assert sweep.wakers[0] == {("loop", "server"): 1, ("server", "client"): 1}
    text = episodes(sweep.episodes[0], rounds=1)
    assert "1.0 a round of 1 ms or more (2.0 ms a round, 100% of them threads preempted" in text


def test_events_outside_every_window_count_nowhere() -> None:
    sweep = Sweep([(200.0, 201.0)], {})
    sweep.run(TRACE)
    assert sum(sweep.idle[0].values()) == 0.0 and not sweep.episodes[0] and not sweep.wakers[0]


def test_threads_group_by_their_process() -> None:
    got = groups({10: 10, 11: 10, 12: 99}, server_pid=10)
    assert got == {10: "loop", 11: "server"}  # 99 is neither the server nor this process: "other"
