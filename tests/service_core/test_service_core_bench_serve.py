"""bench/serve.py end to end on a tiny model: every part runs and reports (no timings asserted)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.serve import main
from bench.serve_report import batched_x, down, inter_char_budget_us, prompt_x
from bench.serve_runs import fit_prompt
from bench.soak import Soak
from service.cores import available_cores


def test_fit_prompt_keeps_only_vocabulary_characters_and_the_length() -> None:
    assert fit_prompt("KING:\nWhat", "INGW:ha", 12) == "ING:WhaING:W"
    assert fit_prompt("xyz", "ab", 3) == "aaa"


def test_a_figure_just_under_its_target_never_prints_as_reaching_it() -> None:
    assert down(9.95, 1) == 9.9 and down(69.6, 0) == 69  # 10x and 70% targets missed
    assert down(10.0, 1) == 10.0 and down(0.29 * 100, 0) == 29  # met, and float noise does not cost a unit


def test_the_targets_figures_as_the_run_and_its_summary_both_judge_them() -> None:
    assert inter_char_budget_us(100.0, 150.0) == 375.0  # 1.5 x (one engine step + one message)
    assert batched_x([11.69, 10.7, 13.1], 88e3, 4e3) == 11.69  # the pairs' median, not the one loop's 22x
    assert batched_x((), 88e3, 8e3) == 11.0  # a run without pairs: over the one loop after the levels
    assert prompt_x(50.0, 40.0) == 1.25  # the long prompt's first char over one raw prefill call


def test_the_soak_is_judged_on_where_memory_settled_not_on_one_round() -> None:
    # RSS (KiB) after each round, 2 of warm-up: the warm-up ends on a round where malloc had handed memory back
    swings = Soak(256, 2000, 60.0, 2, rss_rounds_kib=[231, 220, 238, 228, 232, 230, 223, 221, 219, 235, 232])
    assert swings.growth > 0.05  # the last round against the warm-up's last reads the swing as growth
    assert swings.rss_warm_high_kib == 231 and swings.rss_settled_kib == 223 and swings.settled_growth < 0
    creep = Soak(256, 2000, 300.0, 2, rss_rounds_kib=[242, 244, 253, 253, 253, 255, 256, 257, 259, 260])
    assert creep.rss_settled_kib == 258 and creep.settled_growth > 0.05  # memory that keeps growing still fails
    late = Soak(256, 2000, 300.0, rss_rounds_kib=[242, 244, 245, 254, 256, 258, 260, 262, 264, 266, 268])
    assert late.warmup_rounds == 3 and late.settled_growth > 0.05  # nor when it starts after the warm-up


def test_the_soak_warms_up_until_the_pools_reached_their_size() -> None:
    # shaped as a full run's rounds (tenths of MiB; the twenty-seventh pass): the pools reached their size in round 3
    rounds = [2057, 2065, 2198, 2210, 2204, 2221, 2213, 2209, 2199, 2215, 2125]
    assert Soak(256, 2000, 60.0, 2, rss_rounds_kib=rounds).settled_growth > 0.05  # 2 rounds read it as growth
    default = Soak(256, 2000, 60.0, rss_rounds_kib=rounds)
    assert default.rss_warm_high_kib == 2198 and abs(default.settled_growth) < 0.01


@pytest.mark.timeout(180)
def test_quick_run_reports_every_part_as_json(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(model_repo / "tiny-lstm" / "1"), "--streams", "1,3", "--chars", "30",
            "--engine-seconds", "0.02", "--baseline-streams", "3", "--baseline-seconds", "0.05",
            "--baseline-chars", "10", "--ttfc-repeats", "3", "--prompt-chars", "100", "--prompt-repeats", "1",
            "--short-streams", "3", "--short-requests", "2",
            "--soak-streams", "3", "--soak-seconds", "0.5", "--threads", "1", "--repeats", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    lanes = {"lanes", "8 steps, lanes", "16 steps, lanes"} if available_cores() > 1 else set()  # as the server's
    engines = {"spinning", "no spinning", "8 steps", "16 steps"} | lanes  # and each of its calls of several steps
    assert out["model"] == "tiny-lstm:1" and [lv["streams"] for lv in out["levels"]] == [1, 3]
    started = datetime.strptime(out["started_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(0) <= datetime.now(UTC) - started < timedelta(minutes=3)  # when the run began
    assert out["lanes"].startswith("all threads from ") and ", lane fill " in out["lanes"]  # the server's log line
    for lv in out["levels"]:
        assert lv["served"]["total_chars"] == 30 * lv["streams"] and not lv["served"]["errors"]
        # the window in which every stream of the level streamed, and what arrived in it
        assert 0 <= lv["served"]["all_streaming_s"] < lv["served"]["wall_s"]
        assert 0 <= lv["served"]["all_streaming_chars"] < lv["served"]["total_chars"]
        assert set(lv["engines"]) == engines and lv["ratio"] > 0
        assert len(lv["ratios"]) == 2 and lv["ratio"] in lv["ratios"]  # two pairs, the median (upper) one kept
        # the server's decode calls during the level, from its /metrics: every character but a stream's first
        # (drawn by its prompt's call) was computed by a decode call, and the calls took time
        decode = lv["decode"]
        assert decode["rows_stepped"] >= 29 * lv["streams"] and decode["call_s"] > 0
        assert 0 < lv["lanes_busy"] <= available_cores() + 0.05 and lv["call_us_per_char"] > 0
        assert lv["kept"] <= 30 / 29 and lv["raw_lane_us_per_char"] > 0
        # the event loop's thread is one of the server's (read a moment after the whole process, in clock ticks)
        assert 0 <= lv["loop_cpu_s"] <= lv["server_cpu_s"] + 2 / os.sysconf("SC_CLK_TCK")
    # the no-batching loop beside each pair of the baseline's level (3 streams here), and only there
    one, three = out["levels"]
    assert one["batched"] == [] and one["loop_chars_per_s"] is None
    assert len(three["batched"]) == 2 and all(x > 0 for x in three["batched"]) and three["loop_chars_per_s"] > 0
    # the server's threads' waits for a core (/proc schedstat), in seconds of the load's wall time at most
    assert all(0 <= lv[k] <= 4 * lv["served"]["wall_s"] for lv in (one, three) for k in ("loop_wait_s", "other_wait_s"))
    # the machine's idle and stolen cores (/proc/stat) during each load, and stolen while its raw engine ran
    tick, cores = 1 / os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    for lv in (one, three):
        wall = lv["served"]["wall_s"]
        assert all(0 <= lv[k] <= cores * (wall + 2 * tick) for k in ("host_idle_s", "host_stolen_s"))
        assert lv["raw_s"] > 0 and 0 <= lv["raw_stolen_s"] <= cores * (lv["raw_s"] + 2 * tick)
    kept = three["served"]["chars_per_s"] / three["loop_chars_per_s"]  # the pair shown is one of the two
    assert min(abs(kept - x) for x in three["batched"]) < 1e-9
    assert out["soak"]["rounds"] >= 4 and out["soak"]["errors"] == {} and out["soak"]["rss_warm_kib"] > 0  # 3 warm-up
    assert out["soak"]["rss_warm_high_kib"] >= out["soak"]["rss_warm_kib"] and out["soak"]["rss_settled_kib"] > 0
    assert out["ttfc16"]["count"] == 3 and out["long_ttfc"]["count"] == 1 and out["message_us"] > 0
    assert out["ttfc16_engine"]["count"] == 3 and out["ttfc16_engine"]["p50"] > 0
    # the floor: 3 raw prefill calls, then 3 bare calls whose handler works as long as their median
    assert out["ttfc16_prefill"]["count"] == 3 and out["ttfc16_floor"]["count"] == 3
    assert out["ttfc16_floor"]["p50"] >= out["ttfc16_prefill"]["p50"] - 0.001
    ttfc = next(t["figure"] for t in out["targets"] if t["target"].startswith("1 stream: TTFC"))
    assert "charlm adds" in ttfc
    # the null system call's cost, measured before the probe, is in the JSON and the floor's figure
    assert 0 < out["syscall_ns"] < 1e6 and f"a null system call {out['syscall_ns']:.0f} ns then" in ttfc
    short = out["short"]  # 3 streams of 2 one-character requests each
    assert short["completed"] == 6 == short["total_chars"] and short["requests_per_s"] > 0 and not short["errors"]
    assert out["short_server_cpu_s"] >= 0  # (/proc counts in clock ticks: six tiny requests may read as 0)
    served = "charlm --max-batch 1 --decode-steps 1 over gRPC"  # one row, one step per call
    assert [b["engine"] for b in out["baselines"]] == ["onnxruntime", "pytorch-eager", served]
    assert out["baselines"][2]["chars"] == 3 * 10  # the served baseline ran every stream to its end
    assert {t["target"].split(":")[0] for t in out["targets"]} >= {"64 streams"}  # judged, or marked not run
