"""``csm-service say``: text to an audio file, or streamed raw to a pipe or to the speakers.

The model runs in this process (``--model``: hub id, local directory, or ``tiny-random``).
``--voice`` is a voice profile id from ``--data-dir`` or an audio file with ``--voice-text``.
``--format`` is wav, flac, mp3, opus, pcm, mulaw or alaw (default: from ``-o``'s extension).
``--stream`` writes raw audio as it is generated: to stdout when it is a pipe
(``csm-service say --stream "Hi" | aplay -f S16_LE -r 24000``), else to a local player
(aplay, paplay or ffplay). Progress bars on stderr: the model download (huggingface_hub's) and
the generation (frames, audio seconds, real-time factor); ``--no-progress`` turns them off.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from csm_service.audio.containers import encode_file, streaming_wav_header
from csm_service.audio.encoder import ALAW_8K, MULAW_8K, PCM16_24K, StreamEncoder
from csm_service.audio.wav import wav_bytes
from csm_service.core.constants import DEFAULT_VOICE, FRAME_MS, SAMPLES_PER_FRAME
from csm_service.core.errors import InvalidRequest, SynthesisFailed
from csm_service.core.formats import FILE_FORMATS, FileFormat
from csm_service.core.request import Segment

if TYPE_CHECKING:
    from csm_service.config import EngineConfig
    from csm_service.synthesizer import Synthesizer
    from csm_service.voices import Voice

STREAM_FORMATS = ("pcm", "mulaw", "alaw", "wav")
PLAYERS = {  # (program, arguments for raw s16le 24 kHz mono | mu-law | A-law 8 kHz)
    "aplay": {
        "pcm": ["-q", "-t", "raw", "-f", "S16_LE", "-r", "24000", "-c", "1"],
        "mulaw": ["-q", "-t", "raw", "-f", "MU_LAW", "-r", "8000", "-c", "1"],
        "alaw": ["-q", "-t", "raw", "-f", "A_LAW", "-r", "8000", "-c", "1"],
    },
    "paplay": {
        "pcm": ["--raw", "--format=s16le", "--rate=24000", "--channels=1"],
        "mulaw": ["--raw", "--format=ulaw", "--rate=8000", "--channels=1"],
        "alaw": ["--raw", "--format=alaw", "--rate=8000", "--channels=1"],
    },
    "ffplay": {
        "pcm": ["-nodisp", "-autoexit", "-loglevel", "error", "-f", "s16le", "-ar", "24000", "-i", "-"],
        "mulaw": ["-nodisp", "-autoexit", "-loglevel", "error", "-f", "mulaw", "-ar", "8000", "-i", "-"],
        "alaw": ["-nodisp", "-autoexit", "-loglevel", "error", "-f", "alaw", "-ar", "8000", "-i", "-"],
    },
}


class SayError(Exception):
    """A usage problem, reported as ``error: ...`` with exit status 2."""


def choose_format(name: str | None, output: str, stream: bool) -> FileFormat:
    if name is None:
        suffix = Path(output).suffix.lower().lstrip(".")
        name = "pcm" if stream else {"ogg": "opus", "raw": "pcm", "ulaw": "mulaw", "": "wav"}.get(suffix, suffix)
    fmt = FILE_FORMATS.get(name)
    if fmt is None:
        raise SayError(f"--format: one of {', '.join(FILE_FORMATS)}, got {name!r}")
    if stream and name not in STREAM_FORMATS:
        raise SayError(f"--stream sends raw audio as it is made: --format {' | '.join(STREAM_FORMATS)}, not {name}")
    return fmt


class Encoder:
    """float32 24 kHz chunks -> the format's bytes; streams, or holds everything for the file."""

    def __init__(self, fmt: FileFormat) -> None:
        self.format = fmt
        source = {"mulaw": MULAW_8K, "alaw": ALAW_8K}.get(fmt.g711 or "", PCM16_24K)
        self.stream = StreamEncoder(source)

    def chunk(self, pcm: np.ndarray, last: bool) -> bytes:
        return self.stream.encode(pcm, last)

    def whole_file(self, data: bytes) -> bytes:
        if self.format.name == "wav":
            return wav_bytes(data, self.format.sample_rate)
        if self.format.sndfile is not None:
            return encode_file(np.frombuffer(data, dtype="<i2"), self.format)
        return data


def open_stream_sink(fmt: FileFormat) -> tuple[BinaryIO, subprocess.Popen | None]:
    """stdout when it is a pipe or file; otherwise a local player's stdin."""
    if not sys.stdout.isatty():
        return sys.stdout.buffer, None
    kind = fmt.g711 or "pcm"
    for program, args in PLAYERS.items():
        path = shutil.which(program)
        if path:
            player = subprocess.Popen([path, *args[kind]], stdin=subprocess.PIPE)
            return player.stdin, player  # type: ignore[return-value]
    raise SayError("--stream: stdout is a terminal and no player (aplay, paplay, ffplay) is installed; pipe it")


@dataclass(frozen=True)
class VoiceChoice:
    """What ``--voice`` named, checked before the model loads (a usage error costs no load)."""

    recording: tuple[np.ndarray, int] | None = None  # (samples, rate) of a --voice file
    profile: Voice | None = None


def choose_voice(args: argparse.Namespace) -> VoiceChoice:
    """``--voice`` -> the recording read from disk or the stored profile; SayError when it names neither."""
    from csm_service.audio.decode import MIN_VOICE_SECONDS, AudioLimits, BadAudio, prompt_audio
    from csm_service.config import build_config
    from csm_service.voices import VoiceStore

    spec = args.voice
    if spec in (None, DEFAULT_VOICE):
        return VoiceChoice()
    path = Path(spec).expanduser()
    if path.is_file():
        if not args.voice_text:
            raise SayError("--voice-text: the words spoken in the --voice recording")
        # A server upload's rules (CSM_MAX_VOICE_SECONDS, CSM_MAX_AUDIO_CHANNELS, CSM_MAX_AUDIO_RATE_HZ),
        # read from disk block by block: a small compressed file may declare hours of audio.
        limits = AudioLimits.from_config(build_config({}), min_seconds=MIN_VOICE_SECONDS)
        try:
            return VoiceChoice(recording=prompt_audio(path, limits))
        except BadAudio as exc:
            raise SayError(f"--voice {spec}: {exc}") from None
    voice = VoiceStore(args.data_dir or "./data").get(spec)
    if voice is None:
        raise SayError(f"--voice: {spec!r} is neither a file nor a voice profile in {args.data_dir or './data'}")
    return VoiceChoice(profile=voice)


def voice_context(
    args: argparse.Namespace, choice: VoiceChoice, synth: Synthesizer
) -> tuple[list[Segment], int | None]:
    """The chosen voice -> (context segments, the voice's speaker or None)."""
    from csm_service.audio.decode import to_pcm16

    if choice.recording is not None:
        samples, rate = choice.recording
        return [synth.encode_prompt(to_pcm16(samples), rate, args.voice_text, args.speaker or 0)], None
    if choice.profile is not None:
        return [choice.profile.context_segment()], choice.profile.speaker
    return [], None


# One utterance at a time: the Synthesizer's own slot and queue sizes, whatever the flags say.
SAY_OWN_FIELDS = ("model", "max_batch", "max_queue")


def load_synthesizer(cfg: EngineConfig) -> Synthesizer:
    """The engine as every other engine flag asks (--no-compile, --quantize, --cpu-threads...)."""
    from csm_service.synthesizer import Synthesizer

    print(f"loading {cfg.model} ...", file=sys.stderr)
    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in SAY_OWN_FIELDS}
    return Synthesizer.from_pretrained(cfg.model, **options)


def generate(
    args: argparse.Namespace,
    synth: Synthesizer,
    encoder: Encoder,
    sink: BinaryIO | None,
    speaker: int,
    context: list[Segment],
) -> tuple[bytes, int]:
    """The utterance into ``sink`` as it is made (or kept, for the file), with a progress bar on
    stderr -> (the kept bytes, frames generated)."""
    from tqdm import tqdm

    if sink is not None and encoder.format.name == "wav":
        sink.write(streaming_wav_header(encoder.format.sample_rate))
    total_frames = max(1, args.max_audio_length_ms // FRAME_MS)
    bar = tqdm(total=total_frames, unit="frame", desc="generating", file=sys.stderr, disable=args.no_progress)
    start = time.perf_counter()
    frames = 0
    pieces: list[bytes] = []
    chunks = synth.stream(
        args.text,
        speaker=speaker,
        context=context,
        max_audio_length_ms=args.max_audio_length_ms,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.sample_seed,
    )
    previous = None
    for pcm in itertools.chain(chunks, [None]):  # one behind, so the last chunk flushes the resampler
        if previous is not None:
            data = encoder.chunk(previous, last=pcm is None)
            if sink is not None:
                sink.write(data)
                sink.flush()
            else:
                pieces.append(data)
            frames += round(len(previous) / SAMPLES_PER_FRAME)
            seconds = frames * FRAME_MS / 1000
            bar.update(min(frames, total_frames) - bar.n)
            bar.set_postfix(audio=f"{seconds:.2f}s", rtf=f"{(time.perf_counter() - start) / seconds:.2f}")
        previous = pcm
    bar.total = bar.n
    bar.close()
    return b"".join(pieces), frames


def run_say(args: argparse.Namespace, engine_cfg: EngineConfig) -> int:
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    fmt = choose_format(args.format, args.output, args.stream)  # usage errors (SayError) before the model loads
    choice = choose_voice(args)
    (disable_progress_bars if args.no_progress else enable_progress_bars)()  # the model download's bars
    synth = load_synthesizer(engine_cfg)
    player = None
    try:
        context, voice_speaker = voice_context(args, choice, synth)
        speaker = args.speaker if args.speaker is not None else (voice_speaker or 0)
        encoder = Encoder(fmt)
        sink, player = open_stream_sink(fmt) if args.stream else (None, None)
        start = time.perf_counter()
        data, frames = generate(args, synth, encoder, sink, speaker, context)
    except (InvalidRequest, SynthesisFailed, SayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0  # the reader went away (e.g. | head)
    finally:
        synth.close()
        if player is not None:
            player.stdin.close()  # type: ignore[union-attr]
            player.wait()
    elapsed = time.perf_counter() - start
    if not args.stream:
        Path(args.output).write_bytes(encoder.whole_file(data))
    where = "streamed" if args.stream else f"wrote {args.output}"
    result = synth.last_result
    ending = (
        f" (first audio {result.timings.first_audio_s * 1000:.0f} ms, seed {result.seed}, end: {result.reason})"
        if result
        else ""
    )
    print(
        f"{where}: {frames * FRAME_MS / 1000:.2f} s of audio ({fmt.name}) in {elapsed:.2f} s{ending}", file=sys.stderr
    )
    return 0
