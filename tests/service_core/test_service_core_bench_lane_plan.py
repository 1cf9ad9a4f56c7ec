"""bench/lane_plan.py: the lane plans real server starts pick, each start's first look beside the plan it kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.lane_plan import Start, main, parse, summary


def test_a_starts_log_record_gives_both_picks() -> None:
    msg = "tiny-lstm:1: lanes measured in 0.41 s: all threads from 32 rows, lane fill 2 (first look: 8)"
    start = parse({"msg": msg, "timings_us": "1:70/60/-"}, busy=True)
    assert start == Start(True, 0.41, 32, 2, 8, "1:70/60/-")
    with pytest.raises(ValueError, match="first look"):  # a server from before the later looks
        parse({"msg": "tiny-lstm:1: lanes measured in 0.41 s: all threads from 32 rows, lane fill 2"}, busy=False)


def test_the_summary_counts_the_fills_of_the_starts_with_and_without_the_burner() -> None:
    starts = [Start(False, 1.0, 32, 2, 8, ""), Start(False, 1.2, 32, 2, 2, ""), Start(True, 0.9, 16, 4, 4, "")]
    quiet, busy = summary(starts)
    assert quiet.startswith("without the burner, 2 starts: lane fill at the first look {2: 1, 8: 1}, kept {2: 2}")
    assert "later looks changed 1" in quiet and "1.00-1.20 s" in quiet
    assert busy.startswith("with the burner, 1 starts: lane fill at the first look {4: 1}, kept {4: 1}")

    assert "looked again while idle in 0 starts (0 looks), lowering the fill in 0; served by {2: 2}" in quiet


def test_the_summary_counts_the_looks_while_idle_and_the_fills_served_by() -> None:
    starts = [Start(False, 1.0, 32, 16, 16, "", (16, 2)), Start(False, 1.2, 32, 8, 8, "", (8,)),
              Start(False, 1.1, 32, 2, 2, "")]  # fmt: skip
    assert [s.served_fill for s in starts] == [2, 8, 2]
    (quiet,) = summary(starts)
    assert "looked again while idle in 2 starts (3 looks), lowering the fill in 1; served by {2: 2, 8: 1}" in quiet

def test_real_starts_keep_a_lane_fill_no_larger_than_their_first_looks(
        model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # (later looks time again only the rows below the fewest that stepped faster spread: the fill cannot grow)
    assert main(["--model", str(model_repo / "tiny-lstm" / "1"), "--starts", "2", "--busy-ms", "20",
                 "--server-arg=--lanes=2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    picks = re.findall(r"^start +\d+( \(burner\))?: lane fill (\d+) \(first look (\d+)\)", out, re.M)
    assert [bool(b) for b, _, _ in picks] == [False, True]
    assert all(1 <= int(kept) <= int(first) <= 16 for _, kept, first in picks)
    assert "without the burner, 1 starts" in out and "with the burner, 1 starts" in out
    assert out.count("looked again while idle in ") == 2  # (--idle-s 0: whatever looks came before it stopped)


def test_a_server_that_measures_nothing_is_an_error(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(model_repo / "tiny-lstm" / "1"), "--starts", "1", "--server-arg=--lanes=1",
                 "--server-arg=--intra-op-threads=1"]) == 2  # fmt: skip
    assert "measured no lanes" in capsys.readouterr().out  # (one lane on one thread: nothing to choose)


def test_a_folder_that_holds_no_artifact_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "none" / "1"), "--starts", "1"])
    assert e.value.code == 2
