"""csm.v1's enums and names beside their core counterparts: audio encodings, finish reasons, the service name."""

from __future__ import annotations

from csm_service.core.request import AudioEncoding
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextToSpeechService"].full_name  # "csm.v1.TextToSpeechService"

ENCODING_TO_PROTO: dict[AudioEncoding, int] = {
    AudioEncoding.PCM16_24KHZ: pb.AUDIO_ENCODING_PCM16_24KHZ,
    AudioEncoding.PCM16_8KHZ: pb.AUDIO_ENCODING_PCM16_8KHZ,
    AudioEncoding.MULAW_8KHZ: pb.AUDIO_ENCODING_MULAW_8KHZ,
    AudioEncoding.ALAW_8KHZ: pb.AUDIO_ENCODING_ALAW_8KHZ,
}  # FLOAT32_24KHZ is for in-process callers only: it has no wire value
ENCODING_FROM_PROTO: dict[int, AudioEncoding] = {
    pb.AUDIO_ENCODING_UNSPECIFIED: AudioEncoding.PCM16_24KHZ,
    **{wire: encoding for encoding, wire in ENCODING_TO_PROTO.items()},
}

# FinishReason <-> the name a core SpeechChunk carries (core.events.FINISH_REASON_NAMES' values).
FINISH_REASON_NAMES = {pb.FINISH_REASON_END_OF_SPEECH: "end_of_speech", pb.FINISH_REASON_MAX_LENGTH: "max_length"}
FINISH_REASON_TO_PROTO = {name: wire for wire, name in FINISH_REASON_NAMES.items()}
