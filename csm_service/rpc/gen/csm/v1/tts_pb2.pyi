from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16_24KHZ: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16_8KHZ: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_MULAW_8KHZ: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_ALAW_8KHZ: _ClassVar[AudioEncoding]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_END_OF_SPEECH: _ClassVar[FinishReason]
    FINISH_REASON_MAX_LENGTH: _ClassVar[FinishReason]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM16_24KHZ: AudioEncoding
AUDIO_ENCODING_PCM16_8KHZ: AudioEncoding
AUDIO_ENCODING_MULAW_8KHZ: AudioEncoding
AUDIO_ENCODING_ALAW_8KHZ: AudioEncoding
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_END_OF_SPEECH: FinishReason
FINISH_REASON_MAX_LENGTH: FinishReason

class ContextSegment(_message.Message):
    __slots__ = ("speaker", "text", "codes")
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    speaker: int
    text: str
    codes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, speaker: _Optional[int] = ..., text: _Optional[str] = ..., codes: _Optional[_Iterable[int]] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("text", "speaker", "max_audio_length_ms", "temperature", "top_k", "seed", "context", "encoding", "request_id", "prefix_segments", "max_context_positions", "raw_text", "voice_profile_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_LENGTH_MS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    RAW_TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    speaker: int
    max_audio_length_ms: int
    temperature: float
    top_k: int
    seed: int
    context: _containers.RepeatedCompositeFieldContainer[ContextSegment]
    encoding: AudioEncoding
    request_id: str
    prefix_segments: int
    max_context_positions: int
    raw_text: bool
    voice_profile_id: str
    def __init__(self, text: _Optional[str] = ..., speaker: _Optional[int] = ..., max_audio_length_ms: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., context: _Optional[_Iterable[_Union[ContextSegment, _Mapping]]] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., request_id: _Optional[str] = ..., prefix_segments: _Optional[int] = ..., max_context_positions: _Optional[int] = ..., raw_text: _Optional[bool] = ..., voice_profile_id: _Optional[str] = ...) -> None: ...

class SynthesizeStreamRequest(_message.Message):
    __slots__ = ("request", "resume_from_sequence")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    request: SynthesizeRequest
    resume_from_sequence: int
    def __init__(self, request: _Optional[_Union[SynthesizeRequest, _Mapping]] = ..., resume_from_sequence: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("time_to_first_audio_ms", "generation_time_ms", "real_time_factor", "queue_ms", "prefill_ms", "prompt_positions", "prefix_cache_hit", "context_segments")
    TIME_TO_FIRST_AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    REAL_TIME_FACTOR_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    time_to_first_audio_ms: float
    generation_time_ms: float
    real_time_factor: float
    queue_ms: float
    prefill_ms: float
    prompt_positions: int
    prefix_cache_hit: bool
    context_segments: int
    def __init__(self, time_to_first_audio_ms: _Optional[float] = ..., generation_time_ms: _Optional[float] = ..., real_time_factor: _Optional[float] = ..., queue_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., prompt_positions: _Optional[int] = ..., prefix_cache_hit: _Optional[bool] = ..., context_segments: _Optional[int] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("audio", "encoding", "sample_rate", "duration_ms", "num_frames", "finish_reason", "seed", "timings", "codes", "request_id")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    encoding: AudioEncoding
    sample_rate: int
    duration_ms: float
    num_frames: int
    finish_reason: FinishReason
    seed: int
    timings: Timings
    codes: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, audio: _Optional[bytes] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ..., duration_ms: _Optional[float] = ..., num_frames: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., seed: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., codes: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SynthesizeStreamResponse(_message.Message):
    __slots__ = ("audio", "sequence", "duration_ms", "encoding", "sample_rate", "final", "finish_reason", "seed", "timings", "num_frames", "codes", "request_id")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    sequence: int
    duration_ms: float
    encoding: AudioEncoding
    sample_rate: int
    final: bool
    finish_reason: FinishReason
    seed: int
    timings: Timings
    num_frames: int
    codes: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, audio: _Optional[bytes] = ..., sequence: _Optional[int] = ..., duration_ms: _Optional[float] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ..., final: _Optional[bool] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., seed: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., num_frames: _Optional[int] = ..., codes: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class EncodePromptRequest(_message.Message):
    __slots__ = ("audio", "sample_rate", "transcript", "speaker")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    sample_rate: int
    transcript: str
    speaker: int
    def __init__(self, audio: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., transcript: _Optional[str] = ..., speaker: _Optional[int] = ...) -> None: ...

class EncodePromptResponse(_message.Message):
    __slots__ = ("codes", "num_frames", "speaker", "transcript", "duration_ms")
    CODES_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    codes: _containers.RepeatedScalarFieldContainer[int]
    num_frames: int
    speaker: int
    transcript: str
    duration_ms: float
    def __init__(self, codes: _Optional[_Iterable[int]] = ..., num_frames: _Optional[int] = ..., speaker: _Optional[int] = ..., transcript: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("ready", "state", "model", "device", "device_name", "dtype", "memory_total_bytes", "memory_allocated_bytes", "max_batch", "active_streams", "queue_depth", "version")
    READY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    state: str
    model: str
    device: str
    device_name: str
    dtype: str
    memory_total_bytes: int
    memory_allocated_bytes: int
    max_batch: int
    active_streams: int
    queue_depth: int
    version: str
    def __init__(self, ready: _Optional[bool] = ..., state: _Optional[str] = ..., model: _Optional[str] = ..., device: _Optional[str] = ..., device_name: _Optional[str] = ..., dtype: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_allocated_bytes: _Optional[int] = ..., max_batch: _Optional[int] = ..., active_streams: _Optional[int] = ..., queue_depth: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...
