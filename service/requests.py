"""The domain requests and events that the servicer and the data plane exchange (no protobuf, no grpc)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.sessions import Session
from service.types import Chunk, FeedResult, Finish, GenerateParams


@dataclass(frozen=True)
class GenerateRequest:
    """One Generate call."""

    model: str = ""
    prompt: str = ""
    params: GenerateParams = field(default_factory=GenerateParams)
    session_id: str = ""


@dataclass(frozen=True)
class Done:
    """The last event of a generation: the engine's Finish plus who served it."""

    finish: Finish
    model: str
    session_id: str = ""


@dataclass(frozen=True)
class FeedChunk:
    """One Feed message; session_id and model count on the first one only."""

    text: str
    session_id: str = ""
    model: str = ""


@dataclass(frozen=True)
class Fed:
    """What a Feed (or a Chat feed) did."""

    session_id: str
    result: FeedResult
    model: str = ""  # "name:version" (set by Feed, for its access-log line)


@dataclass(frozen=True)
class ChatOpen:
    """Chat's first action: attach to a session, or create one of ``model``."""

    session_id: str = ""
    model: str = ""
    ttl_seconds: float = 0


@dataclass(frozen=True)
class ChatFeed:
    """Text for the session to consume."""

    text: str


@dataclass(frozen=True)
class ChatGenerate:
    """Sample a reply."""

    params: GenerateParams


class ChatCancel:
    """Stop the generation in progress."""


ChatAction = ChatOpen | ChatFeed | ChatGenerate | ChatCancel
ChatEvent = Session | Fed | Chunk | Done
Turn = ChatFeed | tuple[ChatGenerate, asyncio.Event] | ChatOpen | None  # what Chat's reader queues; None = end
