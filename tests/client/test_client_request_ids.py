"""Request ids through the client library and the CLI: sent on request, read back, the one the server logged."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from fixtures.charlm_client import PROMPT, assert_one_line_error, cli_command, cli_env
from fixtures.server import RunningServer

from client import AsyncClient, Client, DeadlineExceeded, InvalidArgument, NotFound, Unavailable

FRESH = re.compile(r"[0-9a-f]{16}")


def test_a_generation_knows_its_id(logged_server: RunningServer, access_line: Any) -> None:
    with Client(logged_server.target) as client:
        gen = client.generate(PROMPT, max_chars=10, request_id="job-7/step-1")
        assert gen.request_id == "job-7/step-1"
        gen.result()
        made = client.generate(PROMPT, max_chars=10)  # the client makes one: known before the server answers
        assert made.request_id is not None and FRESH.fullmatch(made.request_id)
        again = client.generate(PROMPT, max_chars=10)
        assert again.request_id != made.request_id
        made.result(), again.result()
        with client.chat(request_id="chat-1") as chat:
            chat.feed(PROMPT)
            reply = chat.generate(max_chars=5)
            reply.result()
            assert chat.request_id == reply.request_id == "chat-1"
    assert access_line("job-7/step-1").rpc == "Generate"
    assert access_line(made.request_id).chars_generated == 10
    assert access_line("chat-1").rpc == "Chat"


def test_errors_carry_the_id_the_server_logged(logged_server: RunningServer, access_line: Any) -> None:
    with Client(logged_server.target) as client:
        with pytest.raises(InvalidArgument) as bad:
            client.generate(PROMPT, temperature=50).result()
        with pytest.raises(NotFound) as missing:
            client.model("no-such-model", request_id="ask-42")
        with pytest.raises(NotFound) as gone:
            client.feed("text", session_id="f" * 32)
    assert bad.value.request_id is not None and FRESH.fullmatch(bad.value.request_id)
    assert f"; request id {bad.value.request_id})" in str(bad.value) and bad.value.field == "sampling.temperature"
    assert missing.value.request_id == "ask-42" and "request id ask-42" in str(missing.value)
    for err, rpc in ((bad, "Generate"), (missing, "GetModel"), (gone, "Feed")):
        line = access_line(err.value.request_id)
        assert (line.rpc, line.code) == (rpc, err.value.status)


async def test_the_asyncio_client_too(logged_server: RunningServer, access_line: Any) -> None:
    async with AsyncClient(logged_server.target) as client:
        gen = client.generate(PROMPT, max_chars=10, request_id="async-1")
        await gen.result()
        failing = client.generate(PROMPT, model="no-such-model")
        with pytest.raises(NotFound) as missing:
            await failing.result()
        with pytest.raises(NotFound) as gone:
            await client.get_session("f" * 32, request_id="async-2")
        chat = await client.chat(request_id="async-3")
        async with chat:
            await chat.feed(PROMPT)
            reply = await chat.generate(max_chars=5)
            await reply.result()
    assert gen.request_id == "async-1" and gone.value.request_id == "async-2"
    assert chat.request_id == reply.request_id == "async-3"
    assert missing.value.request_id is not None and failing.request_id == missing.value.request_id
    assert access_line(missing.value.request_id).code == "NOT_FOUND"
    rpcs = [access_line(rid).rpc for rid in ("async-1", "async-2", "async-3")]
    assert rpcs == ["Generate", "GetSession", "Chat"]


def test_an_id_the_server_would_not_keep_is_refused_before_sending(
    logged_server: RunningServer, access_line: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(logged_server.target) as client:
        for bad in ("x" * 129, "caf\u00e9", "tab\there", " edge"):
            with pytest.raises(InvalidArgument) as refused:
                client.models(request_id=bad)
            assert refused.value.field == "request_id" and refused.value.request_id is None
        assert client.models(request_id="x" * 128).default_model  # the longest the server keeps
    assert access_line("x" * 128).rpc == "ListModels"
    calls = [r for r in caplog.records if r.name == "service.access"]
    assert len(calls) == 1  # the refused ones never reached the server


def test_the_cli_names_the_id_of_a_failed_call(logged_server: RunningServer, access_line: Any) -> None:
    for args, rpc, code in (
        (("generate", PROMPT, "-t", "50"), "Generate", "INVALID_ARGUMENT"),
        (("models", "no-such-model"), "GetModel", "NOT_FOUND"),
    ):
        proc = subprocess.run(cli_command(*args), env=cli_env(logged_server.target), capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        line = assert_one_line_error(proc, "(request id ")
        found = re.search(r"\(request id ([0-9a-f]{16})\)$", line)
        assert found, line
        logged = access_line(found.group(1))
        assert (logged.rpc, logged.code) == (rpc, code)


def test_a_call_its_deadline_ends_keeps_the_id_the_server_logged(
    logged_server: RunningServer, access_line: Any
) -> None:
    # The client's deadline ends the call without the server's trailers; the server logged it all the same.
    with Client(logged_server.target) as client:
        gen = client.generate(PROMPT, max_chars=65536, timeout=0.2, request_id="slow-gen")
        with pytest.raises(DeadlineExceeded) as generating:
            gen.result()
        with pytest.raises(DeadlineExceeded) as feeding:
            client.feed("abc" * 200_000, timeout=0.3, request_id="slow-feed")
        with pytest.raises(DeadlineExceeded) as chatting, client.chat(timeout=0.5, request_id="slow-chat") as chat:
            chat.feed(PROMPT)
            chat.generate(max_chars=65536).result()
    for err, rid, rpc in ((generating, "slow-gen", "Generate"), (feeding, "slow-feed", "Feed"),
                          (chatting, "slow-chat", "Chat")):
        assert err.value.request_id == rid and f"request id {rid})" in str(err.value)
        assert access_line(rid).rpc == rpc


async def test_an_asyncio_call_its_deadline_ends_keeps_its_id(logged_server: RunningServer) -> None:
    async with AsyncClient(logged_server.target) as client:
        gen = client.generate(PROMPT, max_chars=65536, timeout=0.2)
        with pytest.raises(DeadlineExceeded) as generating:
            await gen.result()
        with pytest.raises(DeadlineExceeded) as feeding:
            await client.feed("abc" * 200_000, timeout=0.3, request_id="aslow-feed")
        chat = await client.chat(timeout=0.5, request_id="aslow-chat")
        with pytest.raises(DeadlineExceeded) as chatting:
            async with chat:
                await chat.feed(PROMPT)
                await (await chat.generate(max_chars=65536)).result()
    assert generating.value.request_id == gen.request_id is not None
    assert (feeding.value.request_id, chatting.value.request_id) == ("aslow-feed", "aslow-chat")


def test_no_server_no_id_and_ids_that_are_not_strings_are_refused() -> None:
    with Client("127.0.0.1:1", retries=1) as client:
        with pytest.raises(Unavailable) as unreachable:
            client.models(request_id="never-seen")
        for bad in (7, b"bytes"):
            with pytest.raises(InvalidArgument) as refused:
                client.models(request_id=bad)  # type: ignore[arg-type]
            assert refused.value.field == "request_id"
        assert client.generate(PROMPT, request_id="").request_id not in ("", None)  # "" = make one
    assert unreachable.value.request_id is None and "request id" not in str(unreachable.value)


async def test_a_chat_closed_after_its_last_reply_ends_ok_on_the_server(
    logged_server: RunningServer, access_line: Any
) -> None:
    with Client(logged_server.target) as client, client.chat(request_id="clean-sync") as chat:
        chat.feed(PROMPT)
        chat.generate(max_chars=5).result()
    async with AsyncClient(logged_server.target) as aclient:
        async with await aclient.chat(request_id="clean-async") as achat:
            await achat.feed(PROMPT)
            await (await achat.generate(max_chars=5)).result()
        async with await aclient.chat(request_id="left-unread") as achat:
            await achat.feed(PROMPT)
            await achat.generate(max_chars=60_000)  # never read: closing cancels it
    assert access_line("clean-sync").code == access_line("clean-async").code == "OK"
    assert access_line("left-unread").code == "CANCELLED"


def test_a_clients_own_id_tags_every_call_that_names_none(logged_server: RunningServer, access_line: Any) -> None:
    with Client(logged_server.target, request_id="job-9") as client:
        tagged = client.generate(PROMPT, max_chars=5)
        named = client.generate(PROMPT, max_chars=5, request_id="job-9/own")  # a call's own id wins
        tagged.result(), named.result()
        client.models()
        assert (tagged.request_id, named.request_id) == ("job-9", "job-9/own")
    assert access_line("job-9/own").rpc == "Generate"
    assert access_line("job-9/own").chars_generated == 5


def test_the_cli_sends_the_request_id_it_is_given(logged_server: RunningServer, access_line: Any) -> None:
    for args in (("--request-id", "cli-run-1", "models"), ("generate", PROMPT, "-n", "5", "--request-id", "cli-run-2")):
        proc = subprocess.run(cli_command(*args), env=cli_env(logged_server.target), capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert access_line("cli-run-1").rpc == "ListModels" and access_line("cli-run-2").rpc == "Generate"
    bad = subprocess.run(cli_command("--request-id", " padded", "models"), env=cli_env(logged_server.target),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--request-id: must be 1 to 128 printable ASCII characters" in bad.stderr
