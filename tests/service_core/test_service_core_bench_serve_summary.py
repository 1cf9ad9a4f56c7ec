"""bench/serve_summary.py: a pass's bench.serve runs summed up into its counts and the rows of its table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.serve_summary import main

TTFC = "1 stream: TTFC p50 <= 2 ms, 16-char prompt"


def run_json(ratio: float, *, then: float = 0.8, engine: float = 120e3, calls: float = 1.2, ttfc: float | None = None,
             floor: float = 1.5, prefill: float = 0.45, syscall: float = 210.0) -> dict[str, Any]:  # fmt: skip
    """The parts of a ``bench.serve --json-out`` file that the summary reads, shaped as bench.serve writes them."""
    level = {"streams": 64, "ratio": ratio, "ratios": [ratio - 0.05, ratio, ratio + 0.04],
             "engine": {"chars_per_s": engine}, "served": {"all_streaming_chars_per_s": then * engine},
             "call_us_per_char": 18.0 * calls, "raw_lane_us_per_char": 18.0}  # fmt: skip
    data: dict[str, Any] = {"levels": [{**level, "streams": 1, "ratio": 0.5}, level],
                            "targets": [{"target": "64 streams: served >= 70% of raw engine at batch 64 (goal 85%)",
                                         "met": ratio >= 0.70, "figure": ""}]}  # fmt: skip
    if ttfc is not None:
        data |= {"ttfc16": {"p50": ttfc}, "ttfc16_floor": {"p50": floor}, "ttfc16_prefill": {"p50": prefill},
                 "syscall_ns": syscall}
        data["targets"].append({"target": TTFC, "met": ttfc <= 2.0, "figure": ""})
    return data


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_a_pass_is_counted_and_spread_into_its_two_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = [write(tmp_path, "a.json", run_json(0.6999, then=0.72, engine=112.4e3, calls=1.37, ttfc=2.20, floor=1.80,
                                               prefill=0.60, syscall=294)),  # a slow moment: its call apart
            write(tmp_path, "b.json", run_json(0.75, then=0.84, engine=140.0e3, calls=1.10, ttfc=1.60, floor=1.30,
                                               prefill=0.40, syscall=208)),
            write(tmp_path, "c.json", run_json(0.81, then=0.79, engine=130.2e3, calls=1.20, ttfc=1.90, floor=1.55,
                                               prefill=0.50, syscall=216))]  # fmt: skip
    long = [write(tmp_path, "l.json", run_json(0.84)), write(tmp_path, "m.json", run_json(0.76))]
    assert main([*map(str, full), "--long", *map(str, long), "--label", "64th"]) == 0
    out = capsys.readouterr().out.splitlines()
    # 69.99% is not 70%: rounded down as bench.serve judges it, and not counted as met
    assert "64 streams >= 70%: 2 of 3 (69%, 75%, 81%); the goal 85% in 0" in out[1]
    assert "met: 70% 2 of 3, TTFC 2 of 3" in out[2]
    # the floors lie on a line with the raw prefill calls: a correlation of 1
    assert "floors 1.30-1.80 ms, charlm adds 0.30-0.40 ms; the floor's correlation with the raw prefill call 1.00" \
        in out[3]
    assert out[-2] == "| 64th | 2 of 3 | 69-81% | 72-84% | ? | 84%, 76% (71-88%) | 1.20x | 112k-140k |"
    ttfc_row = "| 64th | 2 of 3 | 1.60-2.20 ms | 1.30-1.80 ms | 0.30-0.40 ms | 1.00 | 208-216 ns (294 once) | ? |"
    assert out[-1] == ttfc_row


def test_runs_without_the_probes_leave_the_first_character_cells_empty(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main([str(write(tmp_path, "a.json", run_json(0.8))), str(write(tmp_path, "b.json", run_json(0.9)))]) == 0
    rows = capsys.readouterr().out.splitlines()[-2:]
    assert rows[0] == "| this pass | 2 of 2 | 80-90% | 80% | ? | - | - | 120k |"
    assert rows[1] == "| this pass | 0 of 2 | - | - | - | - | - | ? |"


def test_the_lane_plan_of_each_start_and_what_the_looks_while_idle_did(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # what bench/server_proc.py's lane_plan() writes: the start's pick, then each look while idle
    plans = ["all threads from 64 rows, lane fill 16 (first look: 16); while idle: lane fill 16 (was 16); "
             "while idle: lane fill 4 (was 16)",
             "all threads from 32 rows, lane fill 2 (first look: 8)",
             "all threads from 64 rows, lane fill 4 (first look: 4); while idle: lane fill 4 (was 4)", ""]
    files = [write(tmp_path, f"{i}.json", run_json(0.8) | {"lanes": plan}) for i, plan in enumerate(plans)]
    assert main(list(map(str, files))) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("lane fill"))
    # the run with no plan (a server from before the plan was logged) is left out of the counts
    assert line == ("lane fill kept at start (first look): 16 (16), 2 (8), 4 (4); above 2 in 2 of 3; while idle: "
                    "16 to 4 (16 4), 4 kept (4); served above 2 in 2")


@pytest.mark.parametrize("content", ["{not json", json.dumps({"levels": [{"streams": 8}]}), json.dumps({"x": 1})])
def test_a_file_that_is_not_a_run_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      content: str) -> None:  # fmt: skip
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as e:
        main([str(write(tmp_path, "a.json", run_json(0.8))), str(bad)])
    assert e.value.code == 2 and f"{bad}: not a run of bench.serve --json-out" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--timeline", "--calls"])
def test_a_timeline_or_calls_file_that_is_not_one_is_refused_by_name(tmp_path: Path, flag: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = write(tmp_path, "a.json", run_json(0.8)), write(tmp_path, "bad.json", [{"phases": {}}])
    with pytest.raises(SystemExit) as e:
        main([str(good), flag, str(bad)])
    assert e.value.code == 2 and f"{bad}: not the JSON of bench.{flag[2:]}" in capsys.readouterr().err


def test_table_rows_bold_what_missed_its_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(0.64, then=0.67, engine=137.8e3, calls=1.37, ttfc=2.42, floor=1.78)
    lv64, one = data["levels"][1], data["levels"][0]
    lv64["served"] |= {"chars_per_s": 0.64 * 137.8e3, "wall_s": 2.0}
    lv64 |= {"loop_cpu_s": 0.2, "client_cpu_s": 0.24, "host_idle_s": 0.18, "host_stolen_s": 0.02, "raw_stolen_s": 0.0,
             "raw_s": 7.0, "batched": [11.69, 10.7, 13.1]}  # fmt: skip
    one["served"] = {"inter_char_ms": {"p50": 0.095}}
    data |= {"step1": {"step_us": 100.0}, "message_us": 150.0, "long_ttfc": {"p50": 50.0},
             "prefill": {"one_call_ms": 40.0}, "soak": {"settled_growth": 0.059},
             "started_utc": "2026-12-07T19:26:41Z"}
    data["targets"] += [{"target": "1 stream: inter-char p50 <= 1.5 x (engine step + one message)", "met": True},
                        {"target": "256 streams for 60 s: no errors, RSS growth < 5%", "met": False}]  # fmt: skip
    assert main([str(write(tmp_path, "run3.json", data)), "--table"]) == 0
    # the median of the level's pairs against the loop beside each, rounded down as bench.serve judges it (11.69 ->
    # 11.6x); the inter-char budget 1.5 x (100 + 150) µs; the prompt's first char over one prefill call
    assert capsys.readouterr().out.splitlines()[0] == (
        "| 19:26 | **64%** (88.2k of 137.8k) | 67% | 24.7 / 18.0 | 0.10, 0.12 | 0.09, 0.01 (0.00) | **2.42 ms** (1.78) "
        "| 95 vs 375 µs | 11.6x | 1.25x | **+5.9%** |")


def test_the_start_end_and_call_cells_come_from_timeline_and_calls_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    def timeline(start: float, streaming: float, end: float) -> dict[str, Any]:
        """What ``bench.timeline --json-out`` writes, its phases' medians (the groups' cores left out)."""
        return {"phases": {"start": {"ms": start}, "all streaming": {"ms": streaming}, "end": {"ms": end}}}

    def calls(*bare_us: float) -> list[list[dict[str, Any]]]:
        """What ``bench.calls --json`` prints: every round, each of every server in turn."""
        return [[{"kind": "bare", "server_us": us}, {"kind": "charlm", "server_us": 2 * us}] for us in bare_us]

    argv = [str(write(tmp_path, "a.json", run_json(0.8, ttfc=1.5))),
            "--timeline", str(write(tmp_path, "t1.json", timeline(49, 1198, 110))),
            str(write(tmp_path, "t2.json", timeline(73, 1489, 148))),
            "--calls", str(write(tmp_path, "c.json", calls(530, 542, 600)))]
    assert main(argv) == 0
    row1, row2 = capsys.readouterr().out.splitlines()[-2:]
    # each level's start and end, and their share of it: (49 + 110) / 1357 and (73 + 148) / 1710
    assert "| 49-73 / 110-148 ms (12-13%) |" in row1
    assert row2.endswith("| 542 µs |")  # the bare server's, the median of the rounds


def test_a_timeline_file_that_is_not_one_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(write(tmp_path, "a.json", run_json(0.8))), "--timeline", str(write(tmp_path, "t.json", {"x": 1}))])
    assert e.value.code == 2 and "not the JSON of bench.timeline --json-out" in capsys.readouterr().err
