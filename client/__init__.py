"""charlm client: a sync and an asyncio library over gRPC, and the ``charlm`` command line."""

from client.aio import AsyncChat, AsyncClient, AsyncSession
from client.connection import DEFAULT_TARGET, ConnectOptions
from client.errors import (
    Cancelled,
    CharlmError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServerError,
    SessionBusy,
    Unauthenticated,
    Unavailable,
)
from client.generation import AsyncGeneration, Generation
from client.sync import Chat, Client, Session
from client.types import Chunk, FeedResult, Finish, ModelInfo, ModelList, Sampling, SessionInfo

__all__ = [
    "DEFAULT_TARGET",
    "AsyncChat",
    "AsyncClient",
    "AsyncGeneration",
    "AsyncSession",
    "Cancelled",
    "CharlmError",
    "Chat",
    "Chunk",
    "Client",
    "ConnectOptions",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FeedResult",
    "Finish",
    "Generation",
    "InvalidArgument",
    "ModelInfo",
    "ModelList",
    "NotFound",
    "ResourceExhausted",
    "Sampling",
    "ServerError",
    "Session",
    "SessionBusy",
    "SessionInfo",
    "Unauthenticated",
    "Unavailable",
]
