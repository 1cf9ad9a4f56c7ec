"""The load generator behind `charlm bench` and bench/serve.py: percentiles, and a small real run."""

from __future__ import annotations

import math
import re
import time

import pytest
from fixtures.charlm_client import PROMPT
from fixtures.server import RunningServer

from client.loadgen import _StreamStats, all_streaming, percentile, run_load, summarize


def test_percentile_interpolates() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 90) == 7.0 and math.isnan(percentile([], 50))
    s = summarize([3.0, 1.0, 2.0])
    assert (s.p50, s.mean, s.count) == (2.0, 2.0, 3)


def test_latencies_are_worked_out_from_each_requests_arrivals() -> None:
    # Two requests of one stream, one after another: the first started at 10.0 s, its chunks at 10.002 (3
    # characters), 10.006 (2), 10.007 (1); the second started at 11.0 s, its chunk at 11.001 (4); a third got nothing.
    stats = _StreamStats(arrivals=[(10.002, 3), (10.006, 2), (10.007, 1), (11.001, 4)],
                         requests=[(10.0, 0), (11.0, 3), (12.0, 4)])
    ttfc, chunk_gaps, char_gaps = stats.latencies()
    assert ttfc == pytest.approx([2.0, 1.0])  # ms from each request's start (none for the third)
    assert chunk_gaps == pytest.approx([4.0, 1.0])  # within a request only: 11.001 - 10.007 is no gap
    assert char_gaps == pytest.approx([2.0, 2.0, 1.0])  # 4 ms over 2 characters, 1 ms over 1
    assert stats.chars == 10


async def test_run_load_counts_every_character(server: RunningServer) -> None:
    seen: list[int] = []
    report = await run_load(server.target, streams=4, chars=50, prompt=PROMPT, channels=2, progress=seen.append)
    assert report.total_chars == 200 == sum(seen) and report.completed == 4 and report.errors == {}
    assert report.channels == 2 and report.ttfc_ms.count == 4
    assert report.total_chunks == len(seen) and 1.0 <= report.chars_per_chunk <= 50
    # Inter-character gaps spread each chunk gap over its characters: they sum to the inter-chunk gaps.
    assert report.inter_chunk_ms.count == report.total_chunks - 4  # one gap fewer than chunks, per stream
    assert report.inter_chunk_ms.count <= report.inter_char_ms.count < 200
    assert report.inter_char_ms.mean * report.inter_char_ms.count == pytest.approx(
        report.inter_chunk_ms.mean * report.inter_chunk_ms.count, rel=1e-6)
    assert report.chars_per_s > 0 and report.ttfc_ms.p50 > 0
    assert report.cpu_s > 0  # this process's CPU while the streams ran


async def test_run_load_streams_can_make_several_requests_each(server: RunningServer) -> None:
    seen: list[int] = []
    report = await run_load(server.target, streams=2, chars=5, prompt=PROMPT, requests=3, progress=seen.append)
    assert report.requests == 6 == report.completed == report.ttfc_ms.count and report.errors == {}
    assert report.total_chars == 30 == sum(seen)
    assert report.requests_per_s == pytest.approx(6 / report.wall_s) and report.to_dict()["requests_per_stream"] == 3


async def test_run_load_reports_errors_by_status(server: RunningServer) -> None:
    report = await run_load(server.target, streams=3, chars=10, prompt=PROMPT, model="no-such-model", requests=2)
    assert report.errors == {"NOT_FOUND": 6} and report.completed == 0 and report.total_chars == 0
    assert report.to_dict()["errors"] == {"NOT_FOUND": 6} and report.requests_per_s == 0
    assert "no-such-model" in report.error_messages["NOT_FOUND"]
    assert re.search(r"\(request id [0-9a-f]{16}\)$", report.error_messages["NOT_FOUND"])  # to find it in the log


def test_all_streaming_is_the_window_every_stream_shares() -> None:
    # Stream a streams from t=1 to t=5, stream b from t=2 to t=4: all stream from 2 to 4. What arrives then
    # counts, the chunk that opens the window does not (its characters came before it).
    a = [(1.0, 10), (3.0, 10), (5.0, 10)]
    b = [(2.0, 7), (2.5, 1), (4.0, 2)]
    assert all_streaming([a, b]) == (2.0, 10 + 1 + 2, 2.0)  # (and it began at b's first chunk)
    assert all_streaming([a, [(5.5, 3)]]) == (0.0, 0, 0.0)  # b began after a ended: never all streaming
    assert all_streaming([a, []]) == (0.0, 0, 0.0) and all_streaming([]) == (0.0, 0, 0.0)  # a stream got nothing
    assert all_streaming([a]) == (4.0, 20, 1.0)  # one stream: its rate after its first chunk


async def test_run_load_reports_the_rate_while_every_stream_streams(server: RunningServer) -> None:
    report = await run_load(server.target, streams=3, chars=400, prompt=PROMPT)
    assert 0 < report.all_streaming_s < report.wall_s and 0 < report.all_streaming_chars < report.total_chars
    assert report.all_streaming_chars_per_s == pytest.approx(report.all_streaming_chars / report.all_streaming_s)
    # the window lies within the load, which began at `started` (this process's perf_counter)
    assert 0 < report.all_streaming_from_s < report.all_streaming_from_s + report.all_streaming_s <= report.wall_s
    assert 0 < report.started < time.perf_counter() - report.wall_s
    assert report.to_dict()["all_streaming_chars_per_s"] == report.all_streaming_chars_per_s
