from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_CANCELLED: FinishReason

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "repetition_penalty", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt", "sampling", "max_chars", "stop", "session_id", "logprobs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    sampling: SamplingParams
    max_chars: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    session_id: str
    logprobs: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., max_chars: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., session_id: _Optional[str] = ..., logprobs: _Optional[bool] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("reason", "stop_sequence", "prompt_chars", "generated_chars", "time_to_first_char_ms", "total_ms", "model", "session_id", "seed")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_CHARS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_CHAR_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    reason: FinishReason
    stop_sequence: str
    prompt_chars: int
    generated_chars: int
    time_to_first_char_ms: float
    total_ms: float
    model: str
    session_id: str
    seed: int
    def __init__(self, reason: _Optional[_Union[FinishReason, str]] = ..., stop_sequence: _Optional[str] = ..., prompt_chars: _Optional[int] = ..., generated_chars: _Optional[int] = ..., time_to_first_char_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., model: _Optional[str] = ..., session_id: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "logprobs", "finish")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    text: str
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    finish: Finish
    def __init__(self, text: _Optional[str] = ..., logprobs: _Optional[_Iterable[float]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("id", "model", "chars_consumed", "ttl_seconds", "created_at", "last_used_at", "expires_at", "state_bytes", "busy")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHARS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    chars_consumed: int
    ttl_seconds: int
    created_at: float
    last_used_at: float
    expires_at: float
    state_bytes: int
    busy: bool
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., chars_consumed: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., created_at: _Optional[float] = ..., last_used_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., state_bytes: _Optional[int] = ..., busy: _Optional[bool] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("model", "prime", "ttl_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIME_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prime: str
    ttl_seconds: int
    def __init__(self, model: _Optional[str] = ..., prime: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForkSessionRequest(_message.Message):
    __slots__ = ("session_id", "ttl_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ttl_seconds: int
    def __init__(self, session_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class FeedRequest(_message.Message):
    __slots__ = ("session_id", "model", "text")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    text: str
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class FeedResponse(_message.Message):
    __slots__ = ("session_id", "chars_consumed", "chars_scored", "nll_nats", "nats_per_char", "bits_per_char")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHARS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    CHARS_SCORED_FIELD_NUMBER: _ClassVar[int]
    NLL_NATS_FIELD_NUMBER: _ClassVar[int]
    NATS_PER_CHAR_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_CHAR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    chars_consumed: int
    chars_scored: int
    nll_nats: float
    nats_per_char: float
    bits_per_char: float
    def __init__(self, session_id: _Optional[str] = ..., chars_consumed: _Optional[int] = ..., chars_scored: _Optional[int] = ..., nll_nats: _Optional[float] = ..., nats_per_char: _Optional[float] = ..., bits_per_char: _Optional[float] = ...) -> None: ...

class ChatOpen(_message.Message):
    __slots__ = ("session_id", "model", "ttl_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    ttl_seconds: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class ChatGenerate(_message.Message):
    __slots__ = ("sampling", "max_chars", "stop", "logprobs")
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    sampling: SamplingParams
    max_chars: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    logprobs: bool
    def __init__(self, sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., max_chars: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., logprobs: _Optional[bool] = ...) -> None: ...

class ChatCancel(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("open", "feed", "generate", "cancel")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    FEED_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    open: ChatOpen
    feed: str
    generate: ChatGenerate
    cancel: ChatCancel
    def __init__(self, open: _Optional[_Union[ChatOpen, _Mapping]] = ..., feed: _Optional[str] = ..., generate: _Optional[_Union[ChatGenerate, _Mapping]] = ..., cancel: _Optional[_Union[ChatCancel, _Mapping]] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("opened", "fed", "generated")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    FED_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    opened: Session
    fed: FeedResponse
    generated: GenerateResponse
    def __init__(self, opened: _Optional[_Union[Session, _Mapping]] = ..., fed: _Optional[_Union[FeedResponse, _Mapping]] = ..., generated: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class StateTensor(_message.Message):
    __slots__ = ("name", "input", "output", "layers", "hidden")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    input: str
    output: str
    layers: int
    hidden: int
    def __init__(self, name: _Optional[str] = ..., input: _Optional[str] = ..., output: _Optional[str] = ..., layers: _Optional[int] = ..., hidden: _Optional[int] = ...) -> None: ...

class Corpus(_message.Message):
    __slots__ = ("name", "sha256", "chars")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CHARS_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    chars: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., chars: _Optional[int] = ...) -> None: ...

class TrainingSummary(_message.Message):
    __slots__ = ("steps", "seconds", "val_loss_nats", "val_bits_per_char", "seed", "config_json")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_NATS_FIELD_NUMBER: _ClassVar[int]
    VAL_BITS_PER_CHAR_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    steps: int
    seconds: float
    val_loss_nats: float
    val_bits_per_char: float
    seed: int
    config_json: str
    def __init__(self, steps: _Optional[int] = ..., seconds: _Optional[float] = ..., val_loss_nats: _Optional[float] = ..., val_bits_per_char: _Optional[float] = ..., seed: _Optional[int] = ..., config_json: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("format_version", "name", "version", "architecture", "layers", "hidden_size", "embedding_size", "vocabulary", "vocab_size", "input_name", "logits_name", "states", "parameters", "corpus", "training", "created_at", "onnx_file", "onnx_sha256", "serving")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    LOGITS_NAME_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CORPUS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ONNX_FILE_FIELD_NUMBER: _ClassVar[int]
    ONNX_SHA256_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    name: str
    version: int
    architecture: str
    layers: int
    hidden_size: int
    embedding_size: int
    vocabulary: str
    vocab_size: int
    input_name: str
    logits_name: str
    states: _containers.RepeatedCompositeFieldContainer[StateTensor]
    parameters: int
    corpus: Corpus
    training: TrainingSummary
    created_at: str
    onnx_file: str
    onnx_sha256: str
    serving: Serving
    def __init__(self, format_version: _Optional[int] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., architecture: _Optional[str] = ..., layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., embedding_size: _Optional[int] = ..., vocabulary: _Optional[str] = ..., vocab_size: _Optional[int] = ..., input_name: _Optional[str] = ..., logits_name: _Optional[str] = ..., states: _Optional[_Iterable[_Union[StateTensor, _Mapping]]] = ..., parameters: _Optional[int] = ..., corpus: _Optional[_Union[Corpus, _Mapping]] = ..., training: _Optional[_Union[TrainingSummary, _Mapping]] = ..., created_at: _Optional[str] = ..., onnx_file: _Optional[str] = ..., onnx_sha256: _Optional[str] = ..., serving: _Optional[_Union[Serving, _Mapping]] = ...) -> None: ...

class Serving(_message.Message):
    __slots__ = ("provider", "decode_precision", "prompt_precision")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    DECODE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_PRECISION_FIELD_NUMBER: _ClassVar[int]
    provider: str
    decode_precision: str
    prompt_precision: str
    def __init__(self, provider: _Optional[str] = ..., decode_precision: _Optional[str] = ..., prompt_precision: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...
