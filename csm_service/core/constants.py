"""The numbers of the model and the API, each defined once."""

from __future__ import annotations

# Mimi and CSM
SAMPLE_RATE = 24_000  # Mimi's output rate
FRAME_MS = 80  # one CSM frame = one Mimi frame = 80 ms
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000  # 1920
NUM_CODEBOOKS = 32  # Mimi codebooks per frame (CSM-1B)
NUM_MIMI_CODES = 2048  # codes per Mimi codebook (the audio vocabulary's 3 extra ids never reach Mimi)

# A speech request's fields: defaults and ranges (the proto's int32/uint64 bound the integers)
MAX_TEXT_CHARS = 4096  # the engine's hard limit per request, as OpenAI's input (--max-text-chars may be lower)
DEFAULT_MAX_AUDIO_MS = 30_000
ENGINE_MAX_AUDIO_MS = 163_840  # 2048 positions of 80 ms: no utterance can be longer
DEFAULT_TEMPERATURE = 0.9
MAX_TEMPERATURE = 5.0
MIN_TEMPERATURE = 1e-6  # a float32 would turn 5e-324 into 0; this low, sampling is argmax anyway
DEFAULT_TOP_K = 50
MAX_SPEAKER = 2**31 - 1
MAX_SEED = 2**63 - 1

# Voices: a prompt (reference audio + transcript) encoded to Mimi codes
DEFAULT_VOICE = "default"  # the built-in voice: no prompt, speaker id only
MIN_PROMPT_RATE, MAX_PROMPT_RATE = 8_000, 48_000  # sample rates a prompt may be encoded from
MAX_PROMPT_SECONDS = 60.0

# OpenAI's speed: CSM has no speaking-rate control, so the audio is time-stretched
MIN_SPEED, MAX_SPEED = 0.25, 4.0
