"""A server whose decode batches keep their states in onnxruntime values (``--device-batch on``, as on CUDA),
through the real client: the same text as the default server, sessions included, on the shipped model (whose
text depends on its state far more than the tiny models' does)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from client import AsyncClient
from service.config import EngineConfig
from service.runtime import RuntimeConfig

SHIPPED = Path(__file__).resolve().parents[2] / "models"
PROMPTS = ["The king", "Her eyes", "What say", "My lord,", "Now is the"]
SAMPLINGS = [{"seed": 1}, {"temperature": 0.0}, {"top_k": 4, "seed": 2}, {"repetition_penalty": 1.2, "seed": 3},
             {"temperature": 0.8, "seed": 4}]  # fmt: skip


async def texts_and_session(target: str) -> tuple[list[str], str, str]:
    """The requests' texts sent at once (batched, several steps per call where they may); a session's text in one
    call and in two."""
    async with AsyncClient(target) as client:
        await client.wait_ready()

        async def one(prompt: str, sampling: dict[str, float]) -> str:
            return "".join([t async for t in client.generate(prompt, max_chars=90, **sampling)])  # type: ignore[arg-type]

        texts = await asyncio.gather(*(one(p, s) for p, s in zip(PROMPTS, SAMPLINGS, strict=True)))
        whole, split = [await client.create_session(prime="To be, or not") for _ in range(2)]
        one_call = "".join([t async for t in whole.generate(max_chars=60, seed=5)])
        two_calls = "".join([t async for t in split.generate(max_chars=21, seed=5)])
        two_calls += "".join([t async for t in split.generate(max_chars=39)])
        return list(texts), one_call, two_calls


async def test_device_batch_server_serves_the_default_servers_text(server_factory) -> None:
    plain = server_factory(model_repo=SHIPPED, default_model="shakespeare", engine=EngineConfig(max_batch=8))
    device = server_factory(model_repo=SHIPPED, default_model="shakespeare", engine=EngineConfig(max_batch=8),
                            runtime=RuntimeConfig(device_batch="on"))  # fmt: skip
    plain_texts, plain_one, _ = await texts_and_session(plain.target)
    texts, one_call, two_calls = await texts_and_session(device.target)
    assert texts == plain_texts and all(len(t) == 90 for t in texts)
    assert one_call == two_calls == plain_one and len(one_call) == 60
