"""Generate and the model RPCs through the real server and the generated stubs."""

from __future__ import annotations

import asyncio

import pytest
from charlm.v1 import charlm_pb2 as pb
from fixtures.server import generate

MODELS = ["tiny-rnn", "tiny-lstm", "tiny-gru"]


@pytest.mark.parametrize("model", MODELS)
async def test_generate_streams_text_and_finishes(stub, model: str) -> None:
    text, logprobs, finish, messages = await generate(
        stub, model=model, prompt="The keeper ", max_chars=300, logprobs=True, sampling=pb.SamplingParams(seed=1))
    assert len(text) == 300 and finish.generated_chars == 300
    assert finish.reason == pb.FINISH_REASON_LENGTH
    assert finish.prompt_chars == len("The keeper ") and finish.model == f"{model}:1" and finish.seed == 1
    assert messages >= 2  # text arrives before the final message
    assert len(logprobs) == 300 and all(lp <= 0 for lp in logprobs)
    assert 0 < finish.time_to_first_char_ms <= finish.total_ms


async def test_default_model_and_latest_version(stub) -> None:
    models = await stub.ListModels(pb.ListModelsRequest())
    assert sorted(m.name for m in models.models) == sorted(MODELS)
    assert models.default_model == "tiny-lstm:1"
    info = await stub.GetModel(pb.GetModelRequest(model="tiny-gru"))
    assert info.architecture == "gru" and info.version == 1 and info.vocab_size == len(info.vocabulary)
    assert (await stub.GetModel(pb.GetModelRequest())).name == "tiny-lstm"
    _, _, finish, _ = await generate(stub, prompt="a", max_chars=5)
    assert finish.model == "tiny-lstm:1"


async def test_seeded_generation_is_reproducible_and_greedy_ignores_seed(stub) -> None:
    a = await generate(stub, prompt="He lit ", max_chars=80, sampling=pb.SamplingParams(seed=42))
    b = await generate(stub, prompt="He lit ", max_chars=80, sampling=pb.SamplingParams(seed=42))
    c = await generate(stub, prompt="He lit ", max_chars=80, sampling=pb.SamplingParams(seed=43))
    assert a[0] == b[0] and a[0] != c[0]
    g1 = await generate(stub, prompt="He lit ", max_chars=40, sampling=pb.SamplingParams(temperature=0, seed=1))
    g2 = await generate(stub, prompt="He lit ", max_chars=40, sampling=pb.SamplingParams(temperature=0, seed=2))
    assert g1[0] == g2[0]


async def test_unseeded_requests_report_the_drawn_seed_which_reproduces_them(stub) -> None:
    text, _, finish, _ = await generate(stub, prompt="The ", max_chars=60)
    again, _, _, _ = await generate(stub, prompt="The ", max_chars=60, sampling=pb.SamplingParams(seed=finish.seed))
    assert again == text


async def test_stop_sequence_ends_generation_with_it_included(stub) -> None:
    free, _, _, _ = await generate(stub, prompt="The ", max_chars=200, sampling=pb.SamplingParams(seed=7))
    stop = free[20:22]  # a sequence the seeded stream is known to produce
    text, _, finish, _ = await generate(stub, prompt="The ", max_chars=200, stop=[stop],
                                        sampling=pb.SamplingParams(seed=7))
    assert finish.reason == pb.FINISH_REASON_STOP and finish.stop_sequence == stop
    assert text.endswith(stop) and free.startswith(text) and len(text) <= 22


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
async def test_batched_equals_unbatched_for_seeded_requests(stub, model: str) -> None:
    sampling = [pb.SamplingParams(seed=s, temperature=0.9, top_k=s % 5, top_p=0.95 if s % 2 else 0,
                                  repetition_penalty=1.2 if s % 3 == 0 else 0) for s in range(64)]
    prompts = ["The " + "abcdefghik"[s % 10] * (1 + s // 10) + " " for s in range(64)]  # different lengths
    alone = [(await generate(stub, model=model, prompt=p, max_chars=50, sampling=sp))[0]
             for p, sp in zip(prompts, sampling, strict=True)]
    together = await asyncio.gather(*(generate(stub, model=model, prompt=p, max_chars=50, sampling=sp)
                                      for p, sp in zip(prompts, sampling, strict=True)))
    assert [t[0] for t in together] == alone
    assert len(set(alone)) > 32  # the seeds really differ


async def test_the_last_characters_leave_with_the_finish(stub) -> None:
    # The engine hands over a generation's last characters and its end together: one message (one gRPC send)
    # carries both, so a one-character request is answered in a single message, alone or in a batch.
    short = await asyncio.gather(*(generate(stub, prompt="Th", max_chars=1, logprobs=True,
                                            sampling=pb.SamplingParams(seed=s)) for s in range(8)))
    assert [(len(text), len(lps), messages) for text, lps, _, messages in short] == [(1, 1, 1)] * 8
    request = pb.GenerateRequest(prompt="The ", max_chars=300, sampling=pb.SamplingParams(seed=3))
    messages = [r async for r in stub.Generate(request)]
    assert messages[-1].HasField("finish") and messages[-1].text
    assert "".join(m.text for m in messages) == (await generate(stub, prompt="The ", max_chars=300,
                                                                sampling=pb.SamplingParams(seed=3)))[0]
