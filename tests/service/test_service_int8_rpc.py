"""A server decoding and consuming prompts in int8 (``--decode-precision auto`` and ``--prompt-precision auto``, the
defaults, on the CPU) through the real client, on the shipped model: a stream's text and log-probabilities do not
depend on its batch mates or on how its calls split, they are int8's own (not the fp32 server's), and the API and
/metrics say which precisions it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fixtures.server import scrape

from client import AsyncClient
from service.config import EngineConfig
from service.runtime import RuntimeConfig

SHIPPED = Path(__file__).resolve().parents[2] / "models"
PROMPTS = ["The king", "Her eyes", "What say", "My lord,", "Now is the"]
SAMPLINGS = [{"seed": 1}, {"temperature": 0.0}, {"top_k": 4, "seed": 2}, {"repetition_penalty": 1.2, "seed": 3},
             {"temperature": 0.8, "seed": 4}]  # fmt: skip
Sampled = tuple[str, list[float]]


async def one(client: AsyncClient, prompt: str, sampling: dict[str, float]) -> Sampled:
    """A request's text and its characters' log-probabilities."""
    text, logprobs = "", []
    async for chunk in client.generate(prompt, max_chars=90, logprobs=True, **sampling).chunks():  # type: ignore[arg-type]
        text += chunk.text
        logprobs += list(chunk.logprobs)
    return text, logprobs


async def sampled(target: str) -> tuple[list[Sampled], list[Sampled], str, str]:
    """The requests sent at once (batched) and one after another (each alone); a session's text in one call and
    in two."""
    async with AsyncClient(target) as client:
        await client.wait_ready()
        together = await asyncio.gather(*(one(client, p, s) for p, s in zip(PROMPTS, SAMPLINGS, strict=True)))
        alone = [await one(client, p, s) for p, s in zip(PROMPTS, SAMPLINGS, strict=True)]
        whole, split = [await client.create_session(prime="To be, or not") for _ in range(2)]
        one_call = "".join([t async for t in whole.generate(max_chars=60, seed=5)])
        two_calls = "".join([t async for t in split.generate(max_chars=21, seed=5)])
        two_calls += "".join([t async for t in split.generate(max_chars=39)])
        return list(together), alone, one_call, two_calls


async def test_an_int8_server_serves_each_stream_the_same_text_alone_or_batched(server_factory) -> None:
    engine = EngineConfig(max_batch=8)
    int8 = server_factory(model_repo=SHIPPED, default_model="shakespeare", engine=engine)  # auto, the default
    fp32 = server_factory(model_repo=SHIPPED, default_model="shakespeare", engine=engine,
                          runtime=RuntimeConfig(decode_precision="fp32"))  # fmt: skip
    together, alone, one_call, two_calls = await sampled(int8.target)
    assert together == alone and all(len(t) == 90 and len(lp) == 90 for t, lp in together)
    assert one_call == two_calls and len(one_call) == 60
    for server, precision, flag in ((int8, "int8", 1), (fp32, "fp32", 0)):  # what each says in the API and /metrics
        async with AsyncClient(server.target) as client:
            listed, = (await client.models()).models
            assert (await client.model()).decode_precision == listed.decode_precision == precision
            assert (await client.model()).prompt_precision == listed.prompt_precision == precision
            assert listed.provider == "cpu"
        exposed = scrape(server.metrics_url)
        assert exposed['charlm_decode_int8{model="shakespeare:1"}'] == flag
        assert exposed['charlm_prompt_int8{model="shakespeare:1"}'] == flag
    reference, _, _, _ = await sampled(fp32.target)
    for (text, logprobs), (ref_text, ref_logprobs) in zip(together, reference, strict=True):
        # the first character is drawn from the prompt's logits: int8's own, and close to fp32's
        assert logprobs[0] != ref_logprobs[0]
        assert text[0] != ref_text[0] or abs(logprobs[0] - ref_logprobs[0]) < 0.1
    assert any(logprobs[1:] != ref[1][1:] for (_, logprobs), ref in zip(together, reference, strict=True))
