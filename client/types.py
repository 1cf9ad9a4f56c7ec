"""Plain data returned by the client: frozen dataclasses, no protobuf at the library's surface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["length", "stop", "cancelled", "unspecified"]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; ``None``/0 fields leave the server's default (temperature 1, no filtering)."""

    temperature: float | None = None  # [0, 10]; 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 0.0  # (0, 1]; 0 or 1 = off
    repetition_penalty: float = 0.0  # [1, 10]; 0 = off
    seed: int | None = None  # None: a drawn seed, or the session's random stream continues


@dataclass(frozen=True)
class Chunk:
    """Characters that arrived in one message and, when asked for, their natural-log probabilities."""

    text: str
    logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class Finish:
    """The summary of one generation (the stream's last message)."""

    reason: FinishReason
    stop_sequence: str
    prompt_chars: int
    generated_chars: int
    time_to_first_char_ms: float
    total_ms: float
    model: str  # "name:version"
    session_id: str
    seed: int


@dataclass(frozen=True)
class SessionInfo:
    """A server-side session: its model, how much it has consumed, and its lifetime (Unix seconds)."""

    id: str
    model: str
    chars_consumed: int
    ttl_seconds: int
    created_at: float
    last_used_at: float
    expires_at: float
    state_bytes: int
    busy: bool


@dataclass(frozen=True)
class FeedResult:
    """What Feed consumed and the text's log-likelihood under the model."""

    session_id: str
    chars_consumed: int
    chars_scored: int
    nll_nats: float
    nats_per_char: float
    bits_per_char: float


@dataclass(frozen=True)
class ModelInfo:
    """A served model version: the artifact's metadata and how the server runs it."""

    name: str
    version: int
    architecture: str  # "rnn" | "lstm" | "gru"
    layers: int
    hidden_size: int
    embedding_size: int
    vocabulary: str
    vocab_size: int
    parameters: int
    corpus_name: str
    corpus_chars: int
    training_steps: int
    val_bits_per_char: float
    created_at: str
    provider: str = ""  # how the server runs it: "cpu" | "cuda" ("" from a server that does not say)
    decode_precision: str = ""  # its decode steps' products: "fp32" | "int8" (a seeded text depends on it)
    prompt_precision: str = ""  # its prompt calls' recurrent layers: "fp32" | "int8" (so does the text on it)

    @property
    def spec(self) -> str:
        """``"name:version"``."""
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ModelList:
    """Served models and the one used when a request names none."""

    models: tuple[ModelInfo, ...]
    default_model: str
