"""bench/timeline.py: the phases of a load and the cores of each, from a real server's /proc schedstat."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.timeline import GROUPS, main, phases, shares
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


@pytest.mark.timeout(120)
def test_a_real_load_is_sampled_and_reported_by_phase(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(model_repo / "tiny-lstm" / "1"), "--streams", "4", "--chars", "400", "--rounds", "2",
            "--bin-ms", "2", "--bins"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in out if line.strip().startswith(("start", "all", "end"))}
    assert set(rows) == {"start", "all", "end"}
    server_run = float(rows["all"][-2].split("/")[0])  # the step threads ran while every stream streamed
    assert server_run > 0.05
    bins = out[out.index(next(x for x in out if x.startswith("the last round"))) + 1 :]
    assert len(bins) >= 3 and all(len(b.split()) == 4 for b in bins)
    with pytest.raises(SystemExit):
        main(["--model", str(model_repo / "tiny-lstm" / "1"), "--rounds", "0"])
