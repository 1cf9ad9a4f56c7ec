"""Protobuf messages to the service's own types and back: what the servicer (service/servicer.py) converts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from charlm.v1 import charlm_pb2 as pb

from service import errors
from service.logs import Call
from service.requests import ChatAction, ChatCancel, ChatEvent, ChatFeed, ChatGenerate, ChatOpen, Done, Fed, FeedChunk
from service.sessions import Session
from service.types import Chunk, GenerateParams, Sampling

_FINISH = {"length": pb.FINISH_REASON_LENGTH, "stop": pb.FINISH_REASON_STOP, "cancelled": pb.FINISH_REASON_CANCELLED}


def sampling_from_pb(p: pb.SamplingParams) -> Sampling:
    """Proto defaults (unset/0) become the documented neutral values."""
    return Sampling(temperature=p.temperature if p.HasField("temperature") else 1.0, top_k=p.top_k,
                    top_p=p.top_p or 1.0, repetition_penalty=p.repetition_penalty or 1.0,
                    seed=p.seed if p.HasField("seed") else None)


def params_from_pb(p: pb.SamplingParams, max_chars: int, stop: Any, logprobs: bool) -> GenerateParams:
    """GenerateParams from the fields GenerateRequest and ChatGenerate share."""
    return GenerateParams(sampling_from_pb(p), max_chars, tuple(stop), logprobs)


def generated_to_pb(event: Chunk | Done, last: Chunk | None = None) -> pb.GenerateResponse:
    """A chunk of text, or the final message with the finish (and the ``last`` chunk's text, if given)."""
    if isinstance(event, Chunk):  # the hot path: one call per message
        if event.logprobs is None:
            return pb.GenerateResponse(text=event.text)  # half the cost of passing an empty logprobs
        return pb.GenerateResponse(text=event.text, logprobs=event.logprobs)
    f, msg = event.finish, pb.GenerateResponse()
    # Set field by field in place: a nested keyword constructor builds a second message and copies it in, which
    # cold (a one-message generation's only message) cost 28-40 µs against 18-22 (docs/performance-history.md)
    out = msg.finish
    out.reason = _FINISH[f.reason]
    out.stop_sequence, out.model, out.session_id = f.stop_sequence, event.model, event.session_id
    out.prompt_chars, out.generated_chars, out.seed = f.prompt_chars, f.generated_chars, f.seed
    out.time_to_first_char_ms, out.total_ms = f.time_to_first_char_ms, f.total_ms
    if last is not None:
        msg.text = last.text
        if last.logprobs is not None:
            msg.logprobs.extend(last.logprobs)
    return msg


def session_to_pb(s: Session) -> pb.Session:
    """A session's description."""
    return pb.Session(id=s.id, model=s.model, chars_consumed=s.state.chars_consumed, ttl_seconds=int(s.ttl_seconds),
                      created_at=s.created_at, last_used_at=s.last_used_at, expires_at=s.expires_at,
                      state_bytes=s.state.nbytes, busy=s.busy)


def fed_to_pb(f: Fed) -> pb.FeedResponse:
    """Characters consumed and their score."""
    r = f.result
    return pb.FeedResponse(session_id=f.session_id, chars_consumed=r.chars_consumed, chars_scored=r.chars_scored,
                           nll_nats=r.nll_nats, nats_per_char=r.nats_per_char, bits_per_char=r.bits_per_char)


def chat_action_from_pb(r: pb.ChatRequest) -> ChatAction:
    """One Chat message as a domain action."""
    kind = r.WhichOneof("action")
    if kind == "open":
        return ChatOpen(r.open.session_id, r.open.model, r.open.ttl_seconds)
    if kind == "feed":
        return ChatFeed(r.feed)
    if kind == "generate":
        g = r.generate
        return ChatGenerate(params_from_pb(g.sampling, g.max_chars, g.stop, g.logprobs))
    if kind == "cancel":
        return ChatCancel()
    raise errors.InvalidArgument("action", "a ChatRequest must set one of open, feed, generate, cancel")


def chat_event_to_pb(e: ChatEvent, last: Chunk | None = None) -> pb.ChatResponse:
    """One Chat event as a message (a Done with the ``last`` chunk's text, if given)."""
    if isinstance(e, Session):
        return pb.ChatResponse(opened=session_to_pb(e))
    if isinstance(e, Fed):
        return pb.ChatResponse(fed=fed_to_pb(e))
    return pb.ChatResponse(generated=generated_to_pb(e, last))


async def feed_chunks(requests: AsyncIterator[pb.FeedRequest], call: Call) -> AsyncIterator[FeedChunk]:
    """A Feed's messages as FeedChunks; the first one's session and model go on the call's record."""
    first = True
    async for r in requests:
        if first:  # the first message names them
            call.model, call.session_id, first = r.model, r.session_id, False
        yield FeedChunk(r.text, r.session_id, r.model)


async def chat_actions(requests: AsyncIterator[pb.ChatRequest], call: Call) -> AsyncIterator[ChatAction]:
    """A Chat's messages as actions; the opening's session and model go on the call's record."""
    first = True
    async for r in requests:  # (a message per turn, not per generated message)
        if first:  # `open`, naming them, unless the client errs
            call.model, call.session_id, first = r.open.model, r.open.session_id, False
        yield chat_action_from_pb(r)


