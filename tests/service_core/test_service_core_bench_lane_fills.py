"""bench/lane_fills.py: engines by lane fill, in process, on a tiny model (no timings asserted)."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest

from bench import lane_fills
from bench.engine_streams import EngineRun
from service.engine import Engine


def test_every_level_runs_at_every_fill_each_round_in_turned_order(model_repo: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, int]] = []  # (lane fill, all threads rows, streams) of every level run
    real = lane_fills.engine_rate

    async def recording(engine: Engine, streams: int, chars: int, prompt: str) -> EngineRun:
        calls.append((engine.config.lane_fill, engine.config.all_threads_rows, streams))  # (warm-ups: not here)
        return await real(engine, streams, chars, prompt)

    monkeypatch.setattr(lane_fills, "engine_rate", recording)
    rounds_done: list[str] = []
    runs = asyncio.run(lane_fills.run(model_repo / "tiny-gru" / "1", [1, 2, 4], [2, 3], chars=30, rounds=3,
                                      threads=1, progress=rounds_done.append))  # fmt: skip
    assert rounds_done == ["round 1 of 3 done", "round 2 of 3 done", "round 3 of 3 done"]
    assert {rows for _, rows, _ in calls} == {runs.all_threads_rows} and runs.measured_fill >= 1
    # round r: each level at every fill, the fills' order turned by r
    expected = [(f, n) for r in range(3) for n in (2, 3) for f in ([1, 2, 4] * 2)[r:r + 3]]
    assert [(f, n) for f, _, n in calls] == expected
    for n in (2, 3):
        assert all(len(runs.rates[n][f]) == 3 and min(runs.rates[n][f]) > 0 for f in (1, 2, 4))
        fourth, first = runs.rates[n][4], runs.rates[n][1]
        assert runs.ratios(n, 4) == pytest.approx([a / b for a, b in zip(fourth, first, strict=True)])


def test_the_table_shows_medians_and_each_rounds_ratio_to_the_first_fill() -> None:
    runs = lane_fills.FillRuns("m:1", [2, 8], 64, 2, {8: {2: [100.0, 200.0, 300.0], 8: [110.0, 100.0, 240.0]}})
    head, cols, line = runs.table()
    assert "3 rounds" in head and "all threads from 64 rows and lane fill 2" in head
    assert "fill 2 c/s" in cols and "8 vs 2" in cols
    cells = line.split()
    assert [int(cells[0]), float(cells[1]), float(cells[2])] == [8, 200, 110]
    assert cells[3] == f"{statistics.median([1.1, 0.5, 0.8]):.2f}x" and "(0.50-1.10)," in line
    assert line.endswith("1 of 3")  # faster than fill 2 in one round


@pytest.mark.parametrize("argv", [["--fills", "2,2"], ["--fills", "0,2"], ["--streams", "0"], ["--rounds", "0"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        lane_fills.main(argv)
    assert e.value.code == 2
