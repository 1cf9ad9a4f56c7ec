"""Feed (scoring equals offline evaluation of the artifact) and Chat (incl. cancel) through the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from charlm.v1 import charlm_pb2 as pb
from fixtures.server import error_info, generate

from service.artifact import load_artifact

TEXT = "The keeper told him to listen. If a bell answers, there is a boat close by."


def offline_nll(version_dir: Path, text: str) -> float:
    """Sum of -log p(char | previous chars) over text[1:], computed directly with onnxruntime from zero state."""
    art = load_artifact(version_dir)
    info = art.info
    sess = ort.InferenceSession(str(art.onnx_path), providers=["CPUExecutionProvider"])
    ids = np.array([[info.vocabulary.index(c) for c in text]], dtype=np.int64)  # (1, T)
    feed = {info.input_name: ids}
    for st in info.states:
        feed[st.input] = np.zeros((st.layers, 1, st.hidden), np.float32)  # (L, 1, H)
    logits = sess.run([info.logits_name], feed)[0][0].astype(np.float64)  # (T, V)
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)  # log-softmax
    return float(-logp[np.arange(len(text) - 1), ids[0, 1:]].sum())


@pytest.mark.parametrize("model", ["tiny-rnn", "tiny-lstm", "tiny-gru"])
async def test_feed_score_equals_offline_evaluation(stub, model_repo: Path, model: str) -> None:
    expected = offline_nll(model_repo / model / "1", TEXT)
    chunks = [TEXT[:10], TEXT[10:11], TEXT[11:40], TEXT[40:]]
    requests = [pb.FeedRequest(model=model, text=chunks[0])] + [pb.FeedRequest(text=c) for c in chunks[1:]]
    r = await stub.Feed(iter(requests))
    assert r.chars_consumed == len(TEXT) and r.chars_scored == len(TEXT) - 1 and r.session_id == ""
    assert r.nll_nats == pytest.approx(expected, rel=1e-4)
    assert r.nats_per_char == pytest.approx(expected / (len(TEXT) - 1), rel=1e-4)
    assert r.bits_per_char == pytest.approx(r.nats_per_char / np.log(2), rel=1e-6)


async def test_feed_advances_a_session(stub, model_repo: Path) -> None:
    s = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-lstm"))
    first = await stub.Feed(iter([pb.FeedRequest(session_id=s.id, text=TEXT[:30])]))
    second = await stub.Feed(iter([pb.FeedRequest(session_id=s.id, text=TEXT[30:])]))
    assert first.session_id == s.id and first.chars_scored == 29 and second.chars_scored == len(TEXT) - 30
    total = first.nll_nats + second.nll_nats
    assert total == pytest.approx(offline_nll(model_repo / "tiny-lstm" / "1", TEXT), rel=1e-4)
    got = await stub.GetSession(pb.GetSessionRequest(session_id=s.id))
    assert got.chars_consumed == len(TEXT)


async def chat_reply(call: Any) -> tuple[str, pb.Finish]:
    """Reads `generated` events up to the one with finish."""
    text = []
    while True:
        r = await call.read()
        assert r.WhichOneof("event") == "generated", r
        text.append(r.generated.text)
        if r.generated.HasField("finish"):
            return "".join(text), r.generated.finish


async def test_chat_interleaves_feed_and_generate_and_cancels(stub) -> None:
    call = stub.Chat()
    await call.write(pb.ChatRequest(open=pb.ChatOpen(model="tiny-gru", ttl_seconds=120)))
    opened = (await call.read()).opened
    assert opened.model == "tiny-gru:1" and opened.ttl_seconds == 120 and opened.busy
    await call.write(pb.ChatRequest(feed="He lit the stove"))
    fed = (await call.read()).fed
    assert fed.chars_consumed == 16 and fed.session_id == opened.id
    await call.write(pb.ChatRequest(generate=pb.ChatGenerate(max_chars=40, sampling=pb.SamplingParams(seed=5))))
    reply, finish = await chat_reply(call)
    assert len(reply) == 40 and finish.reason == pb.FINISH_REASON_LENGTH and finish.session_id == opened.id
    # a long generation, cancelled once its first text has arrived
    await call.write(pb.ChatRequest(generate=pb.ChatGenerate(max_chars=60000)))
    first = await call.read()
    assert first.generated.text
    await call.write(pb.ChatRequest(cancel=pb.ChatCancel()))
    rest, finish = await chat_reply(call)
    assert finish.reason == pb.FINISH_REASON_CANCELLED and finish.generated_chars < 60000
    assert finish.generated_chars == len(first.generated.text) + len(rest)
    # the session is still usable on the same stream, then free once the stream ends
    await call.write(pb.ChatRequest(generate=pb.ChatGenerate(max_chars=5)))
    assert len((await chat_reply(call))[0]) == 5
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
    s = await stub.GetSession(pb.GetSessionRequest(session_id=opened.id))
    assert not s.busy and s.chars_consumed == 16 + 40 + finish.generated_chars + 5


async def test_a_chat_reply_ends_with_its_last_characters_and_the_finish(stub) -> None:
    call = stub.Chat()
    await call.write(pb.ChatRequest(open=pb.ChatOpen(model="tiny-lstm")))
    await call.read()
    await call.write(pb.ChatRequest(feed="He lit the stove"))
    await call.read()
    for max_chars in (1, 30):
        await call.write(pb.ChatRequest(generate=pb.ChatGenerate(max_chars=max_chars)))
        messages = []
        while not messages or not messages[-1].generated.HasField("finish"):
            messages.append(await call.read())
        assert messages[-1].generated.text and sum(len(m.generated.text) for m in messages) == max_chars
        # How a longer reply is split depends on how far the reader lags, so only its end is fixed.
        assert max_chars > 1 or len(messages) == 1
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]


async def test_chat_on_an_existing_session_continues_it(stub) -> None:
    s = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-rnn", prime="The "))
    call = stub.Chat()
    await call.write(pb.ChatRequest(open=pb.ChatOpen(session_id=s.id)))
    assert (await call.read()).opened.id == s.id
    # while the chat holds the session, another stream on it is refused
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await generate(stub, session_id=s.id, max_chars=5)
    assert e.value.code() == grpc.StatusCode.ABORTED and error_info(e.value).reason == "SESSION_BUSY"
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]


async def test_chat_must_open_first(stub) -> None:
    call = stub.Chat()
    await call.write(pb.ChatRequest(feed="hello"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_info(e.value).metadata["field"] == "open"


async def test_chat_cancel_stops_the_reply_in_progress_not_the_next_one_asked_for(stub) -> None:
    call = stub.Chat()
    await call.write(pb.ChatRequest(open=pb.ChatOpen(model="tiny-lstm")))
    await call.read()
    await call.write(pb.ChatRequest(feed="He lit the stove"))
    await call.read()
    await call.write(pb.ChatRequest(generate=pb.ChatGenerate(max_chars=60000)))
    await call.write(pb.ChatRequest(generate=pb.ChatGenerate(max_chars=5)))  # queued behind the first
    first = await call.read()
    assert first.generated.text
    await call.write(pb.ChatRequest(cancel=pb.ChatCancel()))
    _, finish = await chat_reply(call)
    assert finish.reason == pb.FINISH_REASON_CANCELLED and finish.generated_chars < 60000
    reply, finish = await chat_reply(call)
    assert len(reply) == 5 and finish.reason == pb.FINISH_REASON_LENGTH
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]


@pytest.mark.parametrize(("request_", "field"), [
    (pb.ChatRequest(feed="caf\u00e9 \u20ac"), "feed"),  # a character outside the vocabulary
    (pb.ChatRequest(generate=pb.ChatGenerate(max_chars=5)), "generate"),  # nothing fed yet: no context
])
async def test_chat_errors_name_the_chat_field(stub, request_: pb.ChatRequest, field: str) -> None:
    call = stub.Chat()
    await call.write(pb.ChatRequest(open=pb.ChatOpen(model="tiny-gru")))
    await call.read()
    await call.write(request_)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_info(e.value).metadata["field"] == field


async def test_a_feed_right_after_a_cancelled_feed_waits_for_it(stub) -> None:
    s = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-lstm", prime="The "))
    call = stub.Feed(iter([pb.FeedRequest(session_id=s.id, text="the keeper told him to listen. " * 1000)]))
    while not (await stub.GetSession(pb.GetSessionRequest(session_id=s.id))).busy:
        pass
    call.cancel()  # "stop": the server cancels the handler, whose lane lets go of the state at its next step
    r = await stub.Feed(iter([pb.FeedRequest(session_id=s.id, text="and ")]))  # "go on": waits, not ABORTED
    assert r.chars_consumed == 4 and call.cancelled()
    got = await stub.GetSession(pb.GetSessionRequest(session_id=s.id))
    assert not got.busy and got.chars_consumed < 4 + 31_000 + 4  # the cancelled Feed counts what it consumed
