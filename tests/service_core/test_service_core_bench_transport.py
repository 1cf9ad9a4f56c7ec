"""bench/transport.py: the bare grpc.aio server in its child process answers as asked."""

from __future__ import annotations

import asyncio

import grpc

from bench.transport import echo_server, first_message_s


async def _first_messages(target: str, busy_us: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(target) as channel:
        return await first_message_s(channel), await first_message_s(channel, busy_us)


def test_a_bare_call_answers_after_its_handler_worked_as_long_as_asked() -> None:
    with echo_server() as target:
        plain, busy = asyncio.run(_first_messages(target, 50_000))
    assert plain > 0 and busy >= 0.05  # the handler computed 50 ms before its one message

