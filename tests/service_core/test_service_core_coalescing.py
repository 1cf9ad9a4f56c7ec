"""Coalescing by message rate (EngineConfig.messages_per_s): what the serving throughput relies on, no timings."""

from __future__ import annotations

import asyncio

import pytest
from fixtures.service_core import EngineFactory

from service.decoding import Decoding
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


@pytest.mark.parametrize("inline", [16, 0])  # the prompt consumed on the event loop, or in a lane
async def test_a_low_message_rate_sends_the_first_character_alone_then_holds_the_rest(
        make_engine: EngineFactory, inline: int) -> None:  # fmt: skip
    # One stream at 0.001 messages/s may send every 1000 s: its first character at once, the rest when it ends.
    # (400 characters: the reader takes the first before the stream ends unless the loop stalls for 400 steps.)
    engine = make_engine("lstm", messages_per_s=0.001, inline_prompt_chars=inline)
    texts, finish = await chunks_of(engine, 0, 400)
    assert finish.time_to_first_char_ms > 0 and [len(t) for t in texts] == [1, 399]


async def test_a_low_message_rate_holds_the_characters_of_streams_batched_together(
        make_engine: EngineFactory) -> None:  # fmt: skip
    # 4 streams at 0.001 messages/s may send every 4000 s (1000 s a row each; 3000 s once a batch mate has
    # ended), and the model's release ticks count from the engine's start, so none comes: each gets its first
    # character, then the rest when it ends. (A reader that falls behind gets chunks released meanwhile as one
    # message, its first character included.)
    engine = make_engine("lstm", messages_per_s=0.001)
    results = await asyncio.gather(*(chunks_of(engine, seed, 60) for seed in range(4)))
    for texts, finish in results:
        assert finish.time_to_first_char_ms > 0 and finish.generated_chars == 60 == sum(map(len, texts))
        assert 1 <= len(texts) <= 2, [len(t) for t in texts]


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


async def test_the_streams_of_a_batch_are_released_in_the_same_calls(
        make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # Releases come at the model's ticks, one clock for every stream (Scheduler._release_tick), so that messages
    # leave together: a stream past its first character is released in the same decode calls as its batch mates.
    # Two streams may differ once, at the first tick between their first characters.
    releases: list[set[int]] = []  # per decode call: the streams released in the middle of their text
    mid: list[set[int]] = []  # per decode call: the streams in the middle of their text
    deliver = Decoding._deliver

    def spy(self: Decoding, texts: list[str], k: int) -> int:
        rows = list(self._rows)
        before = [(s.sent, s.t_first is not None) for s in rows]
        kept = deliver(self, texts, k)
        going = [(s, sent) for s, (sent, seen) in zip(rows, before, strict=True) if seen and s.generated < s.max_chars]
        mid.append({id(s) for s, _ in going})
        releases.append({id(s) for s, sent in going if s.sent > sent})
        return kept

    monkeypatch.setattr(Decoding, "_deliver", spy)
    engine = make_engine("lstm", messages_per_s=2000, lanes=1)  # 4 rows: a tick every 2 ms
    await asyncio.gather(*(chunks_of(engine, seed, 3000) for seed in range(4)))
    streams = set().union(*mid)
    assert len(streams) == 4 and sum(1 for r in releases if r) >= 4, "too few ticks to tell"
    for a in streams:
        for b in streams - {a}:
            pair = {a, b}
            apart = sum(1 for r, m in zip(releases, mid, strict=True) if pair <= m and len(r & pair) == 1)
            assert apart <= 1, f"released in different calls {apart} times"
