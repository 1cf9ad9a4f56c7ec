"""The batching engine on real tiny models: equivalences (batched = alone, one call = two, engine = reference);
its lane count."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from fixtures.service_core import ARCHS, EngineFactory, RecordingObserver, collect, reference_greedy

from service.cores import available_cores, quota_cores
from service.runtime import Runtime
from service.sampling import log_softmax
from service.types import GenerateParams, Sampling

PROMPT = "The keeper "


@pytest.mark.parametrize("arch", ARCHS)
async def test_greedy_equals_single_stream_reference(make_engine: EngineFactory, fp32_runtimes: dict[str, Runtime],
                                                     arch: str) -> None:  # fmt: skip
    engine = make_engine(arch, fp32=True)  # held to the artifact's graph
    text, finish = await collect(engine, engine.new_state(), PROMPT, GenerateParams(Sampling(temperature=0), 60))
    assert text == reference_greedy(fp32_runtimes[arch], PROMPT, 60)
    assert finish.reason == "length" and finish.generated_chars == 60 and finish.prompt_chars == len(PROMPT)


@pytest.mark.parametrize("temperature", [1e-7, 1e-38, 1e-45])
async def test_a_vanishing_temperature_samples_as_greedy(make_engine: EngineFactory, fp32_runtimes: dict[str, Runtime],
                                                         temperature: float) -> None:  # fmt: skip
    engine = make_engine("lstm", fp32=True)  # (1/T overflows the sampling head's float32 below ~3e-39: every id was 0)
    text, _ = await collect(engine, engine.new_state(), PROMPT, GenerateParams(Sampling(temperature, seed=7), 40))
    assert text == reference_greedy(fp32_runtimes["lstm"], PROMPT, 40)


@pytest.mark.parametrize(("arch", "lanes"), [(arch, 1) for arch in ARCHS] + [(arch, 2) for arch in ARCHS])
async def test_seeded_streams_give_the_same_text_alone_and_among_64(make_engine: EngineFactory, arch: str,
                                                                    lanes: int) -> None:  # fmt: skip
    observer = RecordingObserver()
    engine = make_engine(arch, observer=observer, lanes=lanes)
    await engine.start()
    params = [
        GenerateParams(Sampling(temperature=0.5 + i % 5 * 0.3, top_k=i % 4 * 5, top_p=1.0 - i % 3 * 0.2,
                                repetition_penalty=1.0 + i % 2 * 0.3, seed=1000 + i), max_chars=40 + i % 7)
        for i in range(64)
    ]  # fmt: skip
    prompts = [PROMPT[: 1 + i % len(PROMPT)] for i in range(64)]
    alone = [await collect(engine, engine.new_state(), p, q) for p, q in zip(prompts[:8], params[:8], strict=True)]
    together = await asyncio.gather(*(collect(engine, engine.new_state(), p, q)
                                      for p, q in zip(prompts, params, strict=True)))  # fmt: skip
    assert [t for t, _ in together[:8]] == [t for t, _ in alone]
    assert all(f.seed == 1000 + i for i, (_, f) in enumerate(together))
    assert len({t for t, _ in together}) > 32  # different seeds and settings really differ
    # they really ran as one batch per lane (a lone stream steps on all of onnxruntime's threads, lanes side
    # by side on one each: the two sessions give the same results)
    assert max(observer.steps) == 64 // lanes
    assert observer.generated == sum(len(t) for t, _ in alone + together)
    zero = engine.runtime.zero_state()  # the arrays every fresh state starts from, shared: none were written
    assert zero is engine.new_state().arrays and all(not a.flags.writeable and not a.any() for a in zero)


@pytest.mark.parametrize("arch", ARCHS)
async def test_one_call_equals_two_calls_on_the_same_state(make_engine: EngineFactory, arch: str) -> None:
    engine = make_engine(arch)
    sampling = Sampling(temperature=1.0, top_k=10, seed=42)
    whole, _ = await collect(engine, engine.new_state(), PROMPT, GenerateParams(sampling, 90))
    state = engine.new_state()
    first, _ = await collect(engine, state, PROMPT, GenerateParams(sampling, 35))
    assert state.chars_consumed == len(PROMPT) + 35
    rest, finish = await collect(engine, state, "", GenerateParams(Sampling(temperature=1.0, top_k=10), 55))
    assert first + rest == whole
    assert finish.seed == 42 and finish.prompt_chars == 0


async def test_fork_of_a_state_continues_identically(make_engine: EngineFactory) -> None:
    engine = make_engine("lstm")
    state = engine.new_state(seed=5)
    await collect(engine, state, PROMPT, GenerateParams(Sampling(), 10))
    fork = state.copy()
    a, _ = await collect(engine, state, "", GenerateParams(Sampling(), 30))
    b, _ = await collect(engine, fork, "", GenerateParams(Sampling(), 30))
    assert a == b


@pytest.mark.parametrize("arch", ARCHS)
async def test_feed_scores_like_an_offline_evaluation(make_engine: EngineFactory, tiny_runtimes: dict[str, Runtime],
                                                      tiny_text: str, arch: str) -> None:  # fmt: skip
    rt = tiny_runtimes[arch]
    text = tiny_text[:700]
    engine = make_engine(arch, prefill_chunk=64)
    await engine.start()
    state = engine.new_state()
    first = await engine.feed(state, text[:300])
    second = await engine.feed(state, text[300:])  # continues from the pending character
    ids = np.array([engine.vocab.encode(text)])
    logits, _ = rt.run(ids[:, :-1], tuple(s[:, None] for s in rt.zero_state()))  # one offline call
    lp = log_softmax(logits[0])[np.arange(ids.shape[1] - 1), ids[0, 1:]]  # each char given the ones before
    assert (first.chars_consumed, first.chars_scored) == (300, 299)
    assert (second.chars_consumed, second.chars_scored) == (400, 400)
    assert first.nll_nats + second.nll_nats == pytest.approx(-lp.sum(), rel=1e-5)
    assert first.nll_nats == pytest.approx(-lp[:299].sum(), rel=1e-5)
    assert state.chars_consumed == 700 and state.pending == ids[0, -1]


async def test_generate_after_feed_equals_generate_with_the_text_as_prompt(make_engine: EngineFactory) -> None:
    engine = make_engine("gru")
    greedy = GenerateParams(Sampling(temperature=0), 30)
    direct, _ = await collect(engine, engine.new_state(), PROMPT, greedy)
    state = engine.new_state()
    await engine.feed(state, PROMPT)
    after_feed, _ = await collect(engine, state, "", greedy)
    assert after_feed == direct


async def test_logprobs_are_the_raw_softmax_of_each_sampled_character(
    make_engine: EngineFactory, fp32_runtimes: dict[str, Runtime]
) -> None:
    engine = make_engine("lstm", fp32=True)  # held to the artifact's graph
    await engine.start()
    params = GenerateParams(Sampling(temperature=0.7, seed=3), 25, logprobs=True)
    text, lps = "", []
    async for event in engine.generate(engine.new_state(), PROMPT, params):
        if hasattr(event, "logprobs") and event.logprobs is not None:
            text += event.text
            lps += event.logprobs
    rt = fp32_runtimes["lstm"]
    ids = np.array([engine.vocab.encode(PROMPT + text)])
    logits, _ = rt.run(ids[:, :-1], tuple(s[:, None] for s in rt.zero_state()))
    expected = log_softmax(logits[0])[np.arange(ids.shape[1] - 1), ids[0, 1:]][len(PROMPT) - 1 :]
    assert len(lps) == len(text) == 25
    np.testing.assert_allclose(lps, expected, rtol=1e-4, atol=1e-5)


def test_available_cores_is_within_the_affinity_and_a_container_quota() -> None:
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))
    assert quota_cores("200000 100000\n") == 2 and quota_cores("150000 100000") == 2  # compose's cpus: "1.5"
    assert quota_cores("50000 100000") == 1  # never 0 lanes
    assert quota_cores("max 100000") is None and quota_cores("") is None and quota_cores("x 0") is None
