"""Coalescing by message rate (EngineConfig.messages_per_s): what the serving throughput relies on, no timings."""

from __future__ import annotations

import asyncio

from fixtures.service_core import EngineFactory

from service.engine import Engine
from service.types import Chunk, Finish, GenerateParams, Sampling


async def chunks_of(engine: Engine, seed: int, max_chars: int) -> tuple[list[str], Finish]:
    await engine.start()
    texts: list[str] = []
    async for event in engine.generate(engine.new_state(), "The keeper ", GenerateParams(Sampling(seed=seed),
                                                                                        max_chars=max_chars)):
        if isinstance(event, Chunk):
            texts.append(event.text)
        else:
            return texts, event
    raise AssertionError("no Finish")


async def test_a_low_message_rate_holds_characters_and_the_first_goes_alone(make_engine: EngineFactory) -> None:
    # 4 streams at 0.001 messages/s: each stream may send every 4000 s, i.e. only its first character at once,
    # then everything else when it finishes (a reader slower than the whole generation gets it all at once).
    engine = make_engine("lstm", messages_per_s=0.001)
    results = await asyncio.gather(*(chunks_of(engine, seed, 60) for seed in range(4)))
    for texts, finish in results:
        assert finish.time_to_first_char_ms > 0 and finish.generated_chars == 60 == sum(map(len, texts))
        assert [len(t) for t in texts] in ([1, 59], [60])


async def test_coalescing_changes_messages_not_text(make_engine: EngineFactory) -> None:
    held = await asyncio.gather(*(chunks_of(make_engine("gru", messages_per_s=0.001), s, 80) for s in range(3)))
    every_step = await asyncio.gather(*(chunks_of(make_engine("gru", messages_per_s=0), s, 80) for s in range(3)))
    for (a, _), (b, _) in zip(held, every_step, strict=True):
        assert "".join(a) == "".join(b) and len(a) <= 2


async def test_a_held_stream_still_pauses_when_its_buffer_fills(make_engine: EngineFactory) -> None:
    engine = make_engine("rnn", messages_per_s=0.001, stream_buffer_chars=16)
    texts, finish = await chunks_of(engine, 5, 70)
    assert texts[0] and all(len(t) <= 16 for t in texts) and sum(map(len, texts)) == 70
    assert finish.reason == "length"
