"""Proto enums <-> audio formats (no torch: the edge imports this)."""

from __future__ import annotations

from csm_service.audio.encoder import ALAW_8K, MULAW_8K, PCM16_8K, PCM16_24K, OutputFormat
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

ENCODING_FORMATS: dict[int, OutputFormat] = {
    pb.AUDIO_ENCODING_UNSPECIFIED: PCM16_24K,
    pb.PCM16_24KHZ: PCM16_24K,
    pb.PCM16_8KHZ: PCM16_8K,
    pb.MULAW_8KHZ: MULAW_8K,
    pb.ALAW_8KHZ: ALAW_8K,
}
FINISH_REASONS = {"eos": pb.END_OF_SPEECH, "max_length": pb.MAX_LENGTH}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextToSpeech"].full_name  # "csm.v1.TextToSpeech"
FINISH_REASON_NAMES = {pb.END_OF_SPEECH: "end_of_speech", pb.MAX_LENGTH: "max_length"}
