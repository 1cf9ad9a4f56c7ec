"""bench/timeline.py: the phases of a load and the cores of each, from a real server's /proc schedstat."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import pytest

from bench.server_proc import ThreadStats
from bench.timeline import GROUPS, main, phases, sampled_median, shares
from client.loadgen import LoadReport, Percentiles


def _report(started: float, wall: float, window_from: float, window: float) -> LoadReport:
    p = Percentiles(0, 0, 0, 0, 0)
    return LoadReport("t", 2, 10, 1, wall, 20, 4, 20 / wall, p, p, p, 2, all_streaming_s=window,
                      all_streaming_from_s=window_from, started=started)  # fmt: skip


def test_a_load_is_its_start_the_window_every_stream_streams_and_its_end() -> None:
    assert phases(_report(100.0, 2.0, 0.5, 1.0)) == [("start", 100.0, 100.5), ("all streaming", 100.5, 101.5),
                                                    ("end", 101.5, 102.0)]  # fmt: skip
    never = phases(_report(100.0, 2.0, 0.0, 0.0))  # the streams never all streamed: the whole load is its end
    assert never == [("start", 100.0, 100.0), ("all streaming", 100.0, 100.0), ("end", 100.0, 102.0)]


def test_cores_are_the_schedstat_deltas_over_the_nearest_samples() -> None:
    def at(run_ms: float, wait_ms: float) -> dict[str, tuple[int, int]]:
        return {g: (int(run_ms * 1e6) * (i + 1), int(wait_ms * 1e6)) for i, g in enumerate(GROUPS)}

    samples = [(0.0, at(0, 0)), (0.1, at(50, 10)), (0.2, at(150, 10)), (0.3, at(150, 40))]
    got = shares(samples, 0.102, 0.199)  # nearest: the samples at 0.1 and 0.2
    assert got["loop"] == pytest.approx((1.0, 0.0)) and got["server"] == pytest.approx((2.0, 0.0))
    assert shares(samples, 0.0, 0.3)["client"] == pytest.approx((1.5, 40 / 300))
    assert all(x != x for x in shares(samples, 0.2, 0.21)["loop"])  # one sample: NaN, not a division by zero


def test_a_thread_that_ends_keeps_counting_in_its_process_totals() -> None:
    def spin() -> None:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    stats = ThreadStats(os.getpid())
    try:
        t = threading.Thread(target=spin)
        t.start()
        time.sleep(0.02)
        stats.read()  # sees the spinning thread
        t.join()
        during = stats.read()
        after = stats.read()  # the thread is gone from /proc now: its time stays in the other threads' total
        assert during is not None and after is not None
        assert after[1][0] >= during[1][0] >= 0.04e9
    finally:
        stats.close()


def test_a_phase_with_no_sample_in_one_round_takes_the_median_of_the_others() -> None:
    a = {g: (10, 0) for g in GROUPS}
    b = {g: (30, 0) for g in GROUPS}
    empty = shares([(1.0, a), (1.5, b)], 1.0, 1.1)  # both ends nearest the same sample: a window too short
    assert all(math.isnan(x) for g in GROUPS for x in empty[g])  # not a made-up share
    assert sampled_median([0.4, empty["loop"][0], 0.6]) == pytest.approx(0.5)
    assert sampled_median([0.2, 0.8, 0.5]) == pytest.approx(0.5)
    assert math.isnan(sampled_median([empty["loop"][0]]))  # a phase no round sampled stays nan


@pytest.mark.timeout(120)
def test_a_real_load_is_sampled_and_reported_by_phase(model_repo: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["--model", str(model_repo / "tiny-lstm" / "1"), "--streams", "4", "--chars", "2000", "--rounds", "2",
            "--bin-ms", "2", "--bins", "--json-out", str(tmp_path / "tl.json")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in out if line.strip().startswith(("start", "all", "end"))}
    assert set(rows) == {"start", "all", "end"}
    loop, server, client, host = ([float(x) for x in cell.split("/")] for cell in rows["all"][-4:])
    assert server[0] > 0.05  # the step threads ran while every stream streamed
    assert all(x >= 0 for x in (*loop, *server, *client))  # a thread that ended still counts: nothing goes back
    cores = os.cpu_count() or 1
    assert 0 <= host[0] <= cores + 0.5 and 0 <= host[1] <= cores + 0.5  # the machine's idle and stolen cores
    # the same medians as JSON, for bench.serve_summary: each phase's ms, and each group's cores as printed
    saved = json.loads((tmp_path / "tl.json").read_text())
    assert saved["streams"] == 4 and saved["chars"] == 2000 and len(saved["chars_per_s"]) == 2
    assert list(saved["phases"]) == ["start", "all streaming", "end"]
    assert [f"{x:.2f}" for x in saved["phases"]["all streaming"]["server"]] == [f"{x:.2f}" for x in server]
    assert round(saved["phases"]["all streaming"]["ms"]) == int(rows["all"][2])
    bins = out[out.index(next(x for x in out if x.startswith("the last round"))) + 1 :]
    assert len(bins) >= 3 and all(len(b.split()) == 5 for b in bins)
    with pytest.raises(SystemExit):
        main(["--model", str(model_repo / "tiny-lstm" / "1"), "--rounds", "0"])
