"""The sync client against the real server: generation, sessions, feed, chat, models, health and errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from fixtures.charlm_client import PROMPT
from fixtures.server import RunningServer
from grpc_health.v1 import health, health_pb2_grpc

from client import (
    CharlmError,
    Client,
    ConnectOptions,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    SessionBusy,
    Unavailable,
)


def test_generate_streams_chunks_and_finishes(client: Client) -> None:
    gen = client.generate(PROMPT, max_chars=60, seed=3, logprobs=True)
    assert gen.finish is None
    texts = list(gen)
    assert gen.finish is not None and gen.finish.reason == "length"
    assert "".join(texts) == gen.text and len(gen.text) == 60 == gen.finish.generated_chars
    assert len(gen.logprobs) == 60 and all(lp <= 0 for lp in gen.logprobs)
    assert gen.finish.prompt_chars == len(PROMPT) and gen.finish.seed == 3
    assert gen.finish.model == "tiny-lstm:1"
    again = client.generate(PROMPT, max_chars=60, seed=3)
    again.result()
    assert again.text == gen.text  # seeded: reproducible


def test_generate_stop_sequence(client: Client) -> None:
    gen = client.generate(PROMPT, max_chars=2000, seed=1, stop=[" "], model="tiny-gru")
    finish = gen.result()
    assert finish.reason == "stop" and finish.stop_sequence == " " and gen.text.endswith(" ")
    assert finish.model == "tiny-gru:1"


def test_session_context_manager_continues_and_deletes(client: Client) -> None:
    with client.create_session(model="tiny-rnn", prime=PROMPT) as session:
        assert session.info.model == "tiny-rnn:1" and session.info.chars_consumed == len(PROMPT)
        first = session.generate(max_chars=20, seed=5)
        first.result()
        second = session.generate(max_chars=20)
        second.result()
        assert session.refresh().chars_consumed == len(PROMPT) + 40
        assert session.id in {s.id for s in client.list_sessions("tiny-rnn")}
    with pytest.raises(NotFound) as info:
        client.get_session(session.id)
    assert info.value.reason == "SESSION_NOT_FOUND" and info.value.code == grpc.StatusCode.NOT_FOUND
    # Two calls on a session equal one call of the same length with the same seed.
    with client.create_session(model="tiny-rnn", prime=PROMPT) as one:
        whole = one.generate(max_chars=40, seed=5)
        whole.result()
    assert whole.text == first.text + second.text


def test_fork_evolves_independently(client: Client) -> None:
    with client.create_session(prime=PROMPT) as a, a.fork() as b:
        assert b.id != a.id and b.info.chars_consumed == a.info.chars_consumed
        ga, gb = a.generate(max_chars=30, seed=9), b.generate(max_chars=30, seed=9)
        ga.result(), gb.result()
        assert ga.text == gb.text  # same state, same seed
        b.generate(max_chars=10).result()
        assert b.refresh().chars_consumed == a.refresh().chars_consumed + 10


def test_feed_chunks_equal_one_string(client: Client, tiny_text: str) -> None:
    text = tiny_text[:600]
    whole = client.feed(text, model="tiny-lstm")
    pieces = client.feed((text[i:i + 37] for i in range(0, len(text), 37)), model="tiny-lstm")
    assert whole.chars_consumed == pieces.chars_consumed == len(text)
    assert whole.chars_scored == len(text) - 1
    assert pieces.bits_per_char == pytest.approx(whole.bits_per_char, rel=1e-4)
    with client.create_session() as s:
        fed = s.feed(iter([text[:100], text[100:200]]))
        assert fed.session_id == s.id and s.refresh().chars_consumed == 200


def test_chat_turns_and_cancel(client: Client) -> None:
    with client.chat(model="tiny-lstm") as chat:
        session_id = chat.session.id
        assert chat.feed(PROMPT).chars_consumed == len(PROMPT)
        reply = chat.generate(max_chars=25, seed=2)
        assert len("".join(reply)) == 25 and reply.finish is not None and reply.finish.reason == "length"
        long = chat.generate(max_chars=60000, temperature=1.0)
        received = 0
        for text in long:
            received += len(text)
            if received == len(text):
                long.cancel()
        assert long.finish is not None and long.finish.reason == "cancelled" and received < 60000
        chat.feed(" and")
        assert len(chat.generate(max_chars=5).result().session_id) > 0
    info = client.get_session(session_id)  # the stream ended; the session remains
    assert info.chars_consumed >= len(PROMPT) + 25 + 4 + 5
    client.delete_session(session_id)


def test_models_and_health(client: Client) -> None:
    listing = client.models()
    assert {m.spec for m in listing.models} == {"tiny-rnn:1", "tiny-lstm:1", "tiny-gru:1"}
    assert listing.default_model == "tiny-lstm:1"
    gru = client.model("tiny-gru")
    assert gru.architecture == "gru" and gru.vocab_size == len(gru.vocabulary) and gru.parameters > 0
    assert client.health() == "SERVING" and client.health("charlm.v1.TextGeneration", request_id="hc-1") == "SERVING"
    with pytest.raises(NotFound) as unknown:
        client.health("charlm.v2.Nope", request_id="hc-2")
    assert unknown.value.reason == "SERVICE_NOT_FOUND" and unknown.value.request_id == "hc-2"


def test_errors_keep_status_and_reason(client: Client) -> None:
    with pytest.raises(InvalidArgument) as bad:
        client.generate(PROMPT, temperature=99).result()
    assert bad.value.field == "sampling.temperature" and bad.value.status == "INVALID_ARGUMENT"
    assert "temperature" in str(bad.value)
    with pytest.raises(NotFound) as missing:
        client.model("no-such-model")
    assert missing.value.reason == "MODEL_NOT_FOUND"
    with pytest.raises(DeadlineExceeded):
        client.generate(PROMPT, max_chars=60000, timeout=0.05).result()
    assert issubclass(SessionBusy, CharlmError)


def test_session_busy_is_aborted(client: Client) -> None:
    with client.create_session(prime=PROMPT) as s:
        long = s.generate(max_chars=60000)
        next(iter(long))  # the stream holds the session now
        with pytest.raises(SessionBusy) as busy:
            s.generate(max_chars=5).result()
        assert busy.value.code == grpc.StatusCode.ABORTED and busy.value.reason == "SESSION_BUSY"
        long.cancel()
        assert long.finish is None or long.finish.reason == "cancelled"


def test_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", retries=1, timeout=5) as c, pytest.raises(Unavailable) as down:
        c.models()
    assert down.value.code == grpc.StatusCode.UNAVAILABLE


def test_generation_context_manager_cancels_an_unfinished_stream(client: Client) -> None:
    with client.generate(PROMPT, max_chars=60000) as gen:
        first = next(iter(gen))
    assert first and gen.finish is None
    assert list(gen) == []  # cancelled: the iterator ends, no error
    assert client.health() == "SERVING"


def test_feed_splits_a_long_string_under_the_message_limit(client: Client, tiny_text: str) -> None:
    text = (tiny_text * (70000 // len(tiny_text) + 1))[:70000]  # over the server's 65536 chars per message
    result = client.feed(text, model="tiny-rnn")
    assert result.chars_consumed == 70000 and result.chars_scored == 69999


def slow_chunks(pause_s: float) -> Iterator[str]:
    """Two chunks of text with a pause between them (a slow reader of a file, say)."""
    yield PROMPT
    time.sleep(pause_s)
    yield " and"


def test_feed_has_no_deadline_unless_asked(server: RunningServer) -> None:
    with Client(server.target, timeout=0.3) as c:  # the unary deadline must not apply to Feed
        assert c.feed(slow_chunks(0.8)).chars_consumed == len(PROMPT) + 4
        with pytest.raises(DeadlineExceeded):
            c.feed(slow_chunks(0.8), timeout=0.3)


def test_feed_gives_back_the_iterables_own_exception(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    def failing() -> Iterator[str]:
        yield PROMPT
        raise RuntimeError("the disk is on fire")

    with caplog.at_level(logging.DEBUG, logger="grpc"), pytest.raises(RuntimeError, match="the disk is on fire"):
        client.feed(failing())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no "Exception iterating requests!"
    assert client.feed(PROMPT).chars_consumed == len(PROMPT)  # the channel is fine


def test_chat_next_turn_reads_what_is_left_of_the_reply(client: Client) -> None:
    with client.chat(model="tiny-lstm") as chat:
        chat.feed(PROMPT)
        with chat.generate(max_chars=5000) as first:
            next(iter(first))  # `with` cancels the rest; its last messages are still on the way
        assert chat.feed("x\n").chars_consumed == 2
        assert first.finish is not None and first.finish.reason == "cancelled"
        second = chat.generate(max_chars=300)
        for _ in second:
            break  # a loop left early: the reply goes on to its end
        assert chat.feed("y\n").chars_consumed == 2
        assert second.finish is not None and second.finish.reason == "length" and len(second.text) == 300
        chat.generate(max_chars=5)  # never read at all
        assert chat.generate(max_chars=7).result().generated_chars == 7
    client.delete_session(chat.session.id)


@pytest.mark.parametrize(("call", "field"), [
    (lambda c: c.generate(PROMPT, max_chars=-5), "max_chars"),
    (lambda c: c.generate(PROMPT, seed=-1), "sampling.seed"),
    (lambda c: c.generate(PROMPT, seed=2**64), "sampling.seed"),
    (lambda c: c.generate(PROMPT, top_k=-1), "sampling.top_k"),
    (lambda c: c.create_session(ttl_seconds=-1), "ttl_seconds"),
    (lambda c: c.fork_session("any", ttl_seconds=-1), "ttl_seconds"),
    (lambda c: c.chat(ttl_seconds=2**32), "ttl_seconds"),
])
def test_out_of_range_integers_are_invalid_argument(client: Client, call: Callable[[Client], Any],
                                                    field: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        call(client)
    assert bad.value.field == field and bad.value.status == "INVALID_ARGUMENT" and field in str(bad.value)


def test_every_unary_method_takes_a_timeout(silent_target: str) -> None:
    calls: list[Callable[[Client], Any]] = [
        lambda c: c.create_session(timeout=0.2), lambda c: c.get_session("s", timeout=0.2),
        lambda c: c.list_sessions(timeout=0.2), lambda c: c.delete_session("s", timeout=0.2),
        lambda c: c.fork_session("s", timeout=0.2), lambda c: c.models(timeout=0.2),
        lambda c: c.model("m", timeout=0.2), lambda c: c.health(timeout=0.2), lambda c: c.session("s", timeout=0.2),
    ]
    with Client(silent_target, retries=1, timeout=60) as c:
        for call in calls:
            start = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                call(c)
            assert time.monotonic() - start < 10  # the call's 0.2 s, not the client's 60 s


def test_options_without_a_target_use_charlm_target(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARLM_TARGET", server.target)
    with Client(options=ConnectOptions(timeout=5)) as c:
        assert c.options.target == server.target and c.health() == "SERVING"
    with pytest.raises(ValueError, match="target is empty"):
        Client(" ")


def test_an_error_without_a_message_names_the_call() -> None:
    # grpc's own health servicer answers an unknown service with NOT_FOUND and no message (charlm's names them)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}") as plain, pytest.raises(NotFound) as missing:
            plain.health("no-such-service")
    finally:
        server.stop(None)
    assert missing.value.message == "Health.Check failed with NOT_FOUND and no message"
