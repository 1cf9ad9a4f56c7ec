"""The client's only protobuf conversions: requests built from plain values, responses turned into dataclasses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from charlm.v1 import charlm_pb2 as pb

from client.errors import invalid_argument
from client.types import Chunk, FeedResult, Finish, FinishReason, ModelInfo, ModelList, Sampling, SessionInfo

_REASONS: dict[int, FinishReason] = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_CANCELLED: "cancelled",
}


UINT32 = 2**32 - 1
UINT64 = 2**64 - 1


def unsigned(field: str, value: int, high: int = UINT32) -> int:
    """``value`` if it fits an unsigned protobuf field; else InvalidArgument naming the field, as the server's
    errors do (protobuf itself raises a bare ValueError that does not say which field)."""
    if value < 0:
        raise invalid_argument(field, f"must not be negative, got {value}")
    if value > high:
        raise invalid_argument(field, f"must be at most {high}, got {value}")
    return value


def sampling_pb(s: Sampling) -> pb.SamplingParams:
    """SamplingParams with only the fields the caller set (unset optional fields keep server defaults)."""
    msg = pb.SamplingParams(top_k=unsigned("sampling.top_k", s.top_k), top_p=s.top_p,
                            repetition_penalty=s.repetition_penalty)
    if s.temperature is not None:
        msg.temperature = s.temperature
    if s.seed is not None:
        msg.seed = unsigned("sampling.seed", s.seed, UINT64)
    return msg


def generate_request(
    prompt: str,
    model: str,
    sampling: Sampling,
    max_chars: int,
    stop: Sequence[str],
    session_id: str,
    logprobs: bool,
) -> pb.GenerateRequest:
    """A GenerateRequest from plain arguments."""
    return pb.GenerateRequest(
        model=model,
        prompt=prompt,
        sampling=sampling_pb(sampling),
        max_chars=unsigned("max_chars", max_chars),
        stop=list(stop),
        session_id=session_id,
        logprobs=logprobs,
    )


def chat_generate(sampling: Sampling, max_chars: int, stop: Sequence[str], logprobs: bool) -> pb.ChatRequest:
    """A ChatRequest asking for a reply."""
    gen = pb.ChatGenerate(sampling=sampling_pb(sampling), max_chars=unsigned("max_chars", max_chars), stop=list(stop),
                          logprobs=logprobs)
    return pb.ChatRequest(generate=gen)


def create_session_request(model: str, prime: str, ttl_seconds: int) -> pb.CreateSessionRequest:
    """A CreateSessionRequest (ttl_seconds checked)."""
    return pb.CreateSessionRequest(model=model, prime=prime, ttl_seconds=unsigned("ttl_seconds", ttl_seconds))


def fork_session_request(session_id: str, ttl_seconds: int) -> pb.ForkSessionRequest:
    """A ForkSessionRequest (ttl_seconds checked)."""
    return pb.ForkSessionRequest(session_id=session_id, ttl_seconds=unsigned("ttl_seconds", ttl_seconds))


def chat_open(session_id: str, model: str, ttl_seconds: int) -> pb.ChatOpen:
    """The ChatOpen that starts a Chat stream (ttl_seconds checked)."""
    return pb.ChatOpen(session_id=session_id, model=model, ttl_seconds=unsigned("ttl_seconds", ttl_seconds))


def chunk(msg: pb.GenerateResponse) -> Chunk:
    """The text (and log-probabilities) of one response message."""
    return Chunk(msg.text, tuple(msg.logprobs))


def finish(msg: pb.Finish) -> Finish:
    """A Finish dataclass from the last message's summary."""
    return Finish(
        reason=_REASONS.get(msg.reason, "unspecified"),
        stop_sequence=msg.stop_sequence,
        prompt_chars=msg.prompt_chars,
        generated_chars=msg.generated_chars,
        time_to_first_char_ms=msg.time_to_first_char_ms,
        total_ms=msg.total_ms,
        model=msg.model,
        session_id=msg.session_id,
        seed=msg.seed,
    )


def session(msg: pb.Session) -> SessionInfo:
    """A SessionInfo from a Session message."""
    return SessionInfo(
        id=msg.id,
        model=msg.model,
        chars_consumed=msg.chars_consumed,
        ttl_seconds=msg.ttl_seconds,
        created_at=msg.created_at,
        last_used_at=msg.last_used_at,
        expires_at=msg.expires_at,
        state_bytes=msg.state_bytes,
        busy=msg.busy,
    )


def feed_result(msg: pb.FeedResponse) -> FeedResult:
    """A FeedResult from a FeedResponse."""
    return FeedResult(
        session_id=msg.session_id,
        chars_consumed=msg.chars_consumed,
        chars_scored=msg.chars_scored,
        nll_nats=msg.nll_nats,
        nats_per_char=msg.nats_per_char,
        bits_per_char=msg.bits_per_char,
    )


def model_info(msg: pb.ModelInfo) -> ModelInfo:
    """A ModelInfo dataclass from the model's message (the artifact's metadata and its serving)."""
    return ModelInfo(
        name=msg.name,
        version=msg.version,
        architecture=msg.architecture,
        layers=msg.layers,
        hidden_size=msg.hidden_size,
        embedding_size=msg.embedding_size,
        vocabulary=msg.vocabulary,
        vocab_size=msg.vocab_size,
        parameters=msg.parameters,
        corpus_name=msg.corpus.name,
        corpus_chars=msg.corpus.chars,
        training_steps=msg.training.steps,
        val_bits_per_char=msg.training.val_bits_per_char,
        created_at=msg.created_at,
        provider=msg.serving.provider,
        decode_precision=msg.serving.decode_precision,
        prompt_precision=msg.serving.prompt_precision,
    )


def model_list(msg: pb.ListModelsResponse) -> ModelList:
    """A ModelList from ListModelsResponse."""
    return ModelList(tuple(model_info(m) for m in msg.models), msg.default_model)


FEED_CHUNK_CHARS = 16384  # one string is sent in pieces: the server bounds each message's text


def text_chunks(text: str | Iterable[str]) -> Iterable[str]:
    """A string split into FEED_CHUNK_CHARS pieces; an iterable of chunks passes through as it is."""
    if isinstance(text, str):
        return [text[i:i + FEED_CHUNK_CHARS] for i in range(0, len(text), FEED_CHUNK_CHARS)]
    return text


def feed_stream(chunks: Iterable[str], session_id: str, model: str) -> Iterator[pb.FeedRequest]:
    """FeedRequests for a stream of text chunks; the first carries the session or model (sent even if empty)."""
    first = True
    for text in chunks:
        if not text and not first:
            continue
        yield pb.FeedRequest(session_id=session_id, model=model, text=text) if first else pb.FeedRequest(text=text)
        first = False
    if first:
        yield pb.FeedRequest(session_id=session_id, model=model)
