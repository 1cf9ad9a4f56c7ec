"""bench/engine.py, engine_streams.py, lane_time.py and heap.py: the FLOP count, runs on a tiny model (no timings
asserted)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from bench import engine_streams, heap, lane_time
from bench.engine import flops_per_char, measure, measure_lanes_rate, measure_step_rate
from bench.serve import server_precision
from bench.serve_runs import PROMPT16, fit_prompt
from service.artifact import load_artifact
from service.cores import available_cores
from service.engine import Engine, EngineConfig
from service.runtime import Runtime, RuntimeConfig
from service.types import Chunk, GenerateParams, Sampling
from service.vocab import Vocab


def test_flops_per_char_matches_the_issue_formula_when_embedding_equals_hidden() -> None:
    layers, hidden, vocab = 2, 256, 65
    issue = 2 * layers * 4 * hidden * 2 * hidden + 2 * hidden * vocab  # 2·layers·4·hidden·2·hidden + 2·hidden·vocab
    assert flops_per_char("lstm", layers, hidden, hidden, vocab) == issue
    assert flops_per_char("gru", 1, 8, 4, 10) == 2 * 3 * 8 * (4 + 8) + 2 * 8 * 10
    assert flops_per_char("rnn", 3, 8, 8, 10) == 3 * 2 * 1 * 8 * 16 + 2 * 8 * 10


def test_measurements_run_on_a_tiny_model(model_repo: Path) -> None:
    path = model_repo / "tiny-gru" / "1"
    rate = measure_step_rate(path, batch=4, threads=1, seconds=0.01)
    assert rate.batch == 4 and rate.step_us > 0 and rate.chars_per_s > 0
    report = measure(path, [1, 4], threads=1, seconds=0.01, prefill_chars=20)
    assert [s.batch for s in report.steps] == [1, 4]
    assert report.prefill.chars == 20 and report.compute_bound_chars_per_s > 0
    assert "tiny-gru:1" in report.table() and "compute_bound_chars_per_s" in report.to_json()
    lanes = available_cores()  # the server's lanes; a batch is split over them when it has a row for each
    assert report.lanes == lanes and [s.batch for s in report.lane_steps] == [b for b in (1, 4) if 1 < lanes <= b]
    # the server's calls of several steps, one batch and over the lanes
    assert report.decode_steps == 8 and [s.batch for s in report.multi_steps] == [1, 4]
    assert [s.batch for s in report.multi_lane_steps] == [s.batch for s in report.lane_steps]
    other = measure(path, [4], threads=1, seconds=0.01, prefill_chars=8, decode_steps=3)  # --decode-steps 3
    assert other.decode_steps == 3 and [s.batch for s in other.multi_steps] == [4]
    assert "3 steps per call" in other.table()


def test_lanes_rate_splits_the_batch_over_threads_side_by_side(model_repo: Path) -> None:
    rt = Runtime(load_artifact(model_repo / "tiny-gru" / "1"), RuntimeConfig(intra_op_threads=1))
    for lanes in (1, 3):
        for steps in (1, rt.decode_steps):
            rate = measure_lanes_rate(7, lanes, rt, seconds=0.05, steps=steps)
            assert rate.batch == 7 and rate.step_us > 0 and rate.chars_per_s > 0


def test_raw_steps_of_an_int8_server_are_its_int8_steps(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert server_precision(["--decode-precision=INT8"]) == "int8" and server_precision(["--lanes", "2"]) == "auto"
    assert server_precision(["--decode-precision", "int8", "--max-batch=4"]) == "int8"
    monkeypatch.setenv("CHARLM_DECODE_PRECISION", "int8")  # the server child inherits the environment
    assert server_precision(["--lanes", "2"]) == "int8" and server_precision(["--decode-precision=fp32"]) == "fp32"
    monkeypatch.delenv("CHARLM_DECODE_PRECISION")
    rt = Runtime(load_artifact(model_repo / "tiny-lstm" / "1"), RuntimeConfig(intra_op_threads=1,
                                                                              decode_precision="int8"))  # fmt: skip

    def artifact_graph(*_: object) -> None:
        raise AssertionError("a raw step of an int8 server ran the artifact's fp32 graph")

    monkeypatch.setattr(rt, "bind", artifact_graph)
    for steps in (1, rt.decode_steps):
        assert measure_lanes_rate(4, 1, rt, seconds=0.01, steps=steps).chars_per_s > 0
    built: list[str] = []  # bench.engine's own table: its runtimes decode in the precision asked for
    real = Runtime.__init__

    def recording(self: Runtime, artifact: object, config: RuntimeConfig) -> None:
        built.append(config.decode_precision)
        real(self, artifact, config)  # type: ignore[arg-type]

    monkeypatch.setattr(Runtime, "__init__", recording)
    report = measure(model_repo / "tiny-lstm" / "1", [2], threads=1, seconds=0.01, prefill_chars=8, precision="int8")
    assert built == ["int8", "int8"] and report.precision == "int8" and "decode steps in int8" in report.table()


def test_engine_streams_reports_each_level_beside_raw_steps(model_repo: Path) -> None:
    lines = asyncio.run(
        engine_streams.run(model_repo / "tiny-gru" / "1", [1, 3], chars=40, repeats=2, threads=1, engine_seconds=0.02)
    )
    rows = [line.split() for line in lines[2:]]
    assert [int(r[0]) for r in rows] == [1, 3]
    for r in rows:
        rate, raw, ratio = float(r[1].replace(",", "")), float(r[2].replace(",", "")), float(r[3].rstrip("%"))
        assert rate > 0 and raw > 0 and abs(ratio - 100 * rate / raw) < 1  # the ratio is of the two rates shown
        p50, p99 = (float(v) for v in r[5].split("/"))
        assert 0 < p50 <= p99  # each stream's time to its first chunk
        assert len(r[6:]) == 2  # both pairs listed


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_engine_streams_runs_the_engines_prompts_in_the_precision_asked(model_repo: Path, precision: str) -> None:
    lines = asyncio.run(engine_streams.run(model_repo / "tiny-lstm" / "1", [2], chars=20, repeats=1, threads=1,
                                           engine_seconds=0.02, prompt_precision=precision))  # fmt: skip
    expected = "int8" if precision == "auto" else "fp32"  # (an LSTM with int8 decode steps: auto is int8)
    assert f"(prompts in {expected})" in lines[0] and int(lines[2].split()[0]) == 2


async def _seeded_texts(path: Path, totals: lane_time.Totals | None) -> list[str]:
    """Five seeded generations at once through an Engine, timed by bench.lane_time when ``totals`` is given."""
    rt = Runtime(load_artifact(path), RuntimeConfig(intra_op_threads=1))
    engine = Engine(rt, Vocab(rt.vocabulary), EngineConfig(all_threads_rows=64, lane_fill=2), rt.model)
    prompt = fit_prompt(PROMPT16, rt.vocabulary, 8)

    async def one(seed: int) -> str:
        params = GenerateParams(Sampling(temperature=1.0, seed=seed), max_chars=60)
        events = engine.generate(engine.new_state(), prompt, params)
        return "".join([e.text async for e in events if isinstance(e, Chunk)])

    await engine.start()
    try:
        with lane_time.timing(totals) if totals is not None else contextlib.nullcontext():
            return list(await asyncio.gather(*(one(s) for s in range(5))))
    finally:
        await engine.close()


def test_lane_time_times_the_lanes_without_changing_their_text(model_repo: Path) -> None:
    path = model_repo / "tiny-lstm" / "1"
    originals = [owner.__dict__[name] for owner, name, _ in lane_time.TIMED]
    totals: lane_time.Totals = {}
    assert asyncio.run(_seeded_texts(path, totals)) == asyncio.run(_seeded_texts(path, None))
    assert [owner.__dict__[name] for owner, name, _ in lane_time.TIMED] == originals  # unwrapped after
    lanes = {tid for tid, what in totals if what == "call"}
    assert lanes
    for tid in lanes:
        (call_s, calls), (decode_s, decodes) = totals[(tid, "call")], totals[(tid, "decode")]
        assert calls == decodes > 0 and 0 < call_s < decode_s  # one call in each _decode, timed inside it
        assert all(v >= 0 for k, v in lane_time.parts(totals, tid, wall=decode_s + 1).items() if k != "texts")
    lines = asyncio.run(lane_time.run(path, streams=3, chars=40, rounds=1, threads=1))
    assert "3 streams x 40 characters" in lines[0] and "chars/s" in lines[1]
    assert lines[2:] and all(line.startswith("  lane: ") and "µs a call: call " in line for line in lines[2:])


def test_heap_measures_each_phase_with_warm_and_without(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = model_repo / "tiny-lstm" / "1"
    warmed, plain = (heap.measure(path, capacity=20, warm=w, threads=1) for w in (True, False))
    for r in (warmed, plain):
        assert set(heap.PHASES) <= set(r) and r["started_mib"] > 0 and r["prepare_s"] > 0
    assert warmed["warm_s"] > 100 * plain["warm_s"]  # warm made calls; without it the phase is empty
    assert heap.main(["--model", str(path), "--capacity", "8", "--pairs", "1", "--threads", "1"]) == 0
    sides = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert sides == ["warm", "none"]  # one fresh process per side, alternated
