"""The smaller benchmark tools end to end on tiny models (no timings asserted): bench/transport.py's bare grpc.aio
server (paced, with channel arguments), bench/calls.py's bursts of new calls (bare, charlm-shaped, real),
bench/client_cost.py's client CPU a message (the load generator, the client alone, a bare stub, a blocking one),
bench/latency_ab.py's alternating servers, bench/quantize.py's int8 graph beside the fp32 one, bench/ops.py's decode
call by operator, bench/prompt_threads.py's prompt calls on all threads and on one."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures.charlm_client import PROMPT

from bench.calls import main as calls
from bench.client_cost import main as client_cost
from bench.latency_ab import METRICS
from bench.latency_ab import main as latency_ab
from bench.observer import MODEL, calls_before, calls_now
from bench.ops import main as ops
from bench.prompt_threads import measure as prompt_threads
from bench.quantize import main as quantize
from bench.transport import echo_server, first_message_s, option, paced
from service.artifact import Artifact
from service.runtime import Runtime, RuntimeConfig


async def _first_messages(target: str, busy_us: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(target) as channel:
        return await first_message_s(channel), await first_message_s(channel, busy_us)


def test_a_bare_call_answers_after_its_handler_worked_as_long_as_asked() -> None:
    with echo_server() as target:
        plain, busy = asyncio.run(_first_messages(target, 50_000))
    assert plain > 0 and busy >= 0.05  # the handler computed 50 ms before its one message


def test_paced_streams_get_every_message_spread_and_together() -> None:
    runs = paced(streams=4, messages=3, interval_ms=2, rounds=2)
    assert list(runs) == ["spread", "together"]
    for rows in runs.values():  # (messages/s, client µs, server µs a message) of each round
        assert len(rows) == 2 and all(rate > 0 and client > 0 and server >= 0 for rate, client, server in rows)


def test_paced_streams_with_channel_arguments_on_both_ends_are_a_third_kind() -> None:
    runs = paced(streams=3, messages=2, interval_ms=2, rounds=1, options=[option("grpc.http2.bdp_probe=0")])
    assert list(runs) == ["spread", "together", "options"]
    assert all(len(rows) == 1 and rows[0][0] > 0 and rows[0][1] > 0 for rows in runs.values())


def test_a_channel_argument_reads_as_key_equals_value() -> None:
    assert option("grpc.http2.bdp_probe=0") == ("grpc.http2.bdp_probe", 0)
    assert option("grpc.optimization_target=throughput") == ("grpc.optimization_target", "throughput")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        option("grpc.http2.bdp_probe")


@pytest.mark.timeout(180)
def test_every_configuration_is_measured_every_round(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(model_repo / "tiny-gru" / "1"), "--rounds", "2", "--ttfc-requests", "2", "--chars", "40",
            "--config", "", "--config", "--inline-prompt-chars 0 --steps-wait-ms 0", "--json"]  # fmt: skip
    assert latency_ab(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["config"] for c in out] == ["", "--inline-prompt-chars 0 --steps-wait-ms 0"]
    gaps = {"inter_char_us", "inter_chunk_us"}  # nan when a loaded machine's reader got the stream in one message
    for c in out:
        assert all(len(c[m]) == 2 and all(v > 0 or (m in gaps and math.isnan(v)) for v in c[m]) for m in METRICS)
    latency_ab(argv[:-1])  # the table
    assert "(defaults)" in capsys.readouterr().out


def test_a_configuration_the_server_refuses_is_an_error(
        model_repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # (where the server's log goes)
    assert latency_ab(["--model", str(model_repo / "tiny-gru" / "1"), "--config", "--steps-wait-ms -1"]) == 2
    assert "steps_wait_ms: must be >= 0" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # the log went with the error that carried it


@pytest.mark.timeout(120)
def test_int8_keeps_the_loss_and_only_charlms_keeps_batch_invariance(
    model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_repo / "tiny-lstm" / "1"
    vocabulary = json.loads((model / "meta.json").read_text())["vocabulary"]
    text = tmp_path / "text.txt"
    text.write_text("".join(np.random.default_rng(0).choice(list(vocabulary), 3000)), encoding="utf-8")
    assert quantize([str(text), "--model", str(model), "--seconds", "0.01", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    fp32, ours, prompts, int8 = (res[g] for g in ("fp32", "charlm int8", "charlm int8 prompts", "ort dynamic int8"))
    assert fp32["batch drift"] == 0.0  # a row's logits do not depend on its batch mates
    assert ours["batch drift"] == 0.0  # nor with the server's int8 step: h's scale is fixed ahead
    assert prompts["batch drift"] == 0.0  # nor with its int8 prompts: each layer's range is pinned
    assert int8["batch drift"] > 0.0  # one activation scale over the whole call: they do
    assert prompts["1 row, 16-char prompt, 1 thread(s)"] > 0 and prompts.keys() == int8.keys()
    for q in (ours, prompts, int8):
        assert q["bits per char"] == pytest.approx(fp32["bits per char"], rel=0.02)
        assert q["bits per char"] != fp32["bits per char"]  # (the int8 graphs are what was scored)
    assert int8.keys() < fp32.keys() and all(v > 0 for k, v in int8.items() if "thread" in k)
    assert all(v > 0 for k, v in ours.items() if "thread" in k) and not any("prompt" in k for k in ours)
    calls = [k for k in fp32 if "steps" in k]  # the server's decode calls: fp32's and charlm's int8 only
    assert len(calls) == 3 and all(ours[k] > 0 and k not in int8 for k in calls)


@pytest.mark.timeout(120)
def test_a_graph_other_than_an_lstm_has_no_int8_prompt_figures(
    model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_repo / "tiny-gru" / "1"
    text = tmp_path / "text.txt"
    text.write_text("".join(json.loads((model / "meta.json").read_text())["vocabulary"]) * 20, encoding="utf-8")
    assert quantize([str(text), "--model", str(model), "--seconds", "0.01", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "charlm int8 prompts" not in res and {"fp32", "charlm int8", "ort dynamic int8"} <= res.keys()


def test_a_text_outside_the_vocabulary_is_an_error(model_repo: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    text = tmp_path / "text.txt"
    text.write_text("\u00e9" * 100, encoding="utf-8")
    assert quantize([str(text), "--model", str(model_repo / "tiny-lstm" / "1"), "--seconds", "0.01"]) == 2
    assert "fewer than 2 characters of the model's vocabulary" in capsys.readouterr().out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru"])
def test_a_decode_call_is_split_into_its_cells_and_the_rest(
    name: str, model_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_repo / name / "1"
    layers = json.loads((model / "meta.json").read_text())["layers"]
    argv = ["--model", str(model), "--batches", "1,4", "--steps", "3", "--seconds", "0.01", "--calls", "4"]
    assert ops([*argv, "--rounds", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rows"] for r in rows] == [1, 4]
    cell = name.removeprefix("tiny-").upper()
    for r in rows:
        assert r["cell_nodes"] == pytest.approx(layers)  # one cell operator per layer and step: the warm-up is out
        assert r["other_nodes"] > 0 and r["step_us"] > 0 and r["cell_us"] == r["profile_us"][cell] > 0
        assert r["other_us"] == pytest.approx(r["step_us"] - r["cell_us"])
        assert list(r["profile_us"].values()) == sorted(r["profile_us"].values(), reverse=True)
    assert ops(argv) == 0
    assert "4 rows, share of the profiled kernel time: " in capsys.readouterr().out


def test_a_call_of_one_step_is_refused(model_repo: Path) -> None:
    with pytest.raises(SystemExit) as e:
        ops(["--model", str(model_repo / "tiny-lstm" / "1"), "--steps", "1"])
    assert e.value.code == 2


@pytest.mark.timeout(120)
def test_bursts_of_calls_are_answered_by_the_bare_the_shaped_and_the_real_server(
        model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["--model", str(model_repo / "tiny-lstm" / "1"), "--calls", "3", "--bursts", "2", "--rounds", "2", "--json"]
    assert calls(argv) == 0
    rounds = json.loads(capsys.readouterr().out)
    assert len(rounds) == 2 and [r["kind"] for r in rounds[0]] == ["bare", "shaped", "charlm"]
    for r in (r for rnd in rounds for r in rnd):
        assert r["answered"] == 6  # every call of the round's 2 bursts of 3 got its first message
        assert 0 < r["first_p50_ms"] <= r["first_p99_ms"] and r["first_p50_ms"] <= r["last_p50_ms"]
        assert r["slow_bursts"] == 0  # of 2 bursts neither can come over twice their median (their mean)
        assert r["server_us"] >= 0 and r["loop_us"] >= 0 and r["client_us"] > 0
        assert 0 <= r["kernel_us"] <= r["server_us"]  # the system time is a part of the server's CPU


@pytest.mark.timeout(120)
def test_each_client_reads_every_stream_and_its_cpu_a_message_is_reported(
        model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["--model", str(model_repo / "tiny-lstm" / "1"), "--streams", "3", "--chars", "40", "--rounds", "2",
            "--prompt", PROMPT, "--json"]  # fmt: skip
    assert client_cost(argv) == 0
    rounds = json.loads(capsys.readouterr().out)
    assert len(rounds) == 2 and [r["kind"] for r in rounds[0]] == ["loadgen", "generate", "bare", "sync"]
    for r in (r for rnd in rounds for r in rnd):
        assert r["chars"] == 3 * 40 and 3 <= r["messages"] <= 3 * 40  # every stream's characters, in messages
        assert r["cpu_s"] > 0 and r["us_per_message"] == pytest.approx(r["cpu_s"] / r["messages"] * 1e6)


def test_prompt_calls_on_all_threads_and_on_one_are_timed_for_every_shape(tiny_artifacts: dict[str, Artifact]) -> None:
    rt = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=2))
    rows = prompt_threads(rt, rows=[2, 3], chars=[1, 4], blocks=2, calls=2, idle_s=0.0)
    assert [(r["chars"], r["rows"]) for r in rows] == [(1, 2), (1, 3), (4, 2), (4, 3)]
    for r in rows:
        assert all(r[f"{kind}_wall_us"] > 0 and r[f"{kind}_cpu_us"] >= 0 for kind in ("all", "one"))


@pytest.mark.timeout(120)
def test_another_checkouts_server_is_measured_beside_as_other(model_repo: Path, capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "service").symlink_to(Path(__file__).resolve().parents[2] / "service")  # "another checkout"
    argv = ["--model", str(model_repo / "tiny-lstm" / "1"), "--calls", "2", "--bursts", "1", "--rounds", "1",
            "--server-cwd", str(tmp_path)]  # fmt: skip
    assert calls(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["bare", "shaped", "charlm", "other"]
    assert all(line.split()[-1] == "2/2" for line in lines[2:])  # every call answered


def test_a_decode_calls_metrics_count_the_same_both_ways() -> None:
    # bench.observer times the metrics as they were against now: both must record the same steps and characters
    ways = [calls_before(8), calls_now(8)]
    for call, _ in ways:
        call()
        call()
    for name in ("charlm_batch_size_count", "charlm_batch_size_sum", "charlm_step_seconds_count",
                 "charlm_step_seconds_bucket", "charlm_chars_generated_total"):
        labels = {"model": MODEL, **({"le": "0.00025"} if name.endswith("_bucket") else {})}
        before, now = (registry.get_sample_value(name, labels) for _, registry in ways)
        assert before is not None and before == pytest.approx(now, rel=1e-12), name
    assert ways[1][1].get_sample_value("charlm_batch_size_count", {"model": MODEL}) == 16
