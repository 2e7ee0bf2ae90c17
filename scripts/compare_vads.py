"""Compare voice-activity detectors for Twilio barge-in (docs/benchmarks.md, "Caller speech").

The energy gate the call used before, Silero (the project's own path: csm_service/edge/twilio/vad.py, onnxruntime) against WebRTC's VAD
(``pip install webrtcvad-wheels``; skipped when absent), on 8 kHz mu-law 20 ms frames:

- latency: frames of espeak-ng speech (tests/data/caller_speech.ulaw, from onset) until a run of
  3 voiced frames (one unvoiced frame tolerated inside it), the rule the call uses;
- false barge-ins in 10 s of white noise at -30 dBFS, 50 and 60 Hz hum with harmonics, and the
  bot's speech echoed 20 dB down (the VAD alone: the call's echo gate is not applied here);
- CPU per 20 ms frame (process time, one thread).

Run: ``.venv/bin/python scripts/compare_vads.py``.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

from csm_service.edge.twilio.caller_speech import HANGOVER_FRAMES, SPEECH_FRAMES, VOICED, rms, samples
from csm_service.edge.twilio.vad import SileroStream
from csm_service.tools.twilio_sim import frames_of, hum, mix, white_noise

DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
Detector = Callable[[bytes], bool]  # one 20 ms mu-law frame -> voiced


def energy_gate() -> Detector:
    """The gate before the VAD: a frame above PCM16 RMS 600 (about -35 dBFS) counted as speech."""
    return lambda frame: rms(samples(frame)) >= 600 / 32768


def silero() -> Detector:
    stream = SileroStream()
    return lambda frame: stream.feed(samples(frame)) >= VOICED


def webrtc(mode: int) -> Callable[[], Detector]:
    import webrtcvad

    def make() -> Detector:
        vad = webrtcvad.Vad(mode)
        return lambda frame: vad.is_speech((samples(frame) * 32767).astype("<i2").tobytes(), 8000)

    return make


def barge_ins(voiced: list[bool]) -> list[int]:
    """The 1-based frames at which a run of SPEECH_FRAMES voiced frames completes."""
    out, run, misses = [], 0, 0
    for i, v in enumerate(voiced):
        run, misses = (run + 1, 0) if v else (run, misses + 1)
        if misses > HANGOVER_FRAMES:
            run = 0
        if run >= SPEECH_FRAMES:
            out.append(i + 1)
            run = 0
    return out


def main() -> None:
    speech = frames_of((DATA / "caller_speech.ulaw").read_bytes())
    bot = frames_of((DATA / "bot_speech.ulaw").read_bytes())
    noises = {
        "white -30 dBFS": frames_of(white_noise(10.0, -30.0)),
        "hum 50 Hz": frames_of(hum(10.0, 50.0, -30.0)),
        "hum 60 Hz": frames_of(hum(10.0, 60.0, -30.0)),
        "echo -20 dB": [mix(b"\xff" * 160, f, 0.1) for f in bot * 3][:500],
    }
    detectors: dict[str, Callable[[], Detector]] = {"energy gate (before)": energy_gate, "silero (onnxruntime)": silero}
    try:
        detectors |= {f"webrtc mode {m}": webrtc(m) for m in (0, 1, 2, 3)}
    except ImportError:
        print("webrtcvad-wheels is not installed: Silero only")
    print("| detector | speech heard after | " + " | ".join(noises) + " | CPU per frame |")
    print("|---|---|" + "---|" * len(noises) + "---|")
    for name, make in detectors.items():
        detect = make()
        heard = barge_ins([detect(f) for f in speech])
        false = [len(barge_ins([d(f) for f in frames])) for d, frames in ((make(), n) for n in noises.values())]
        detect, frames = make(), noises["white -30 dBFS"]
        began = time.process_time()
        for frame in frames:
            detect(frame)
        cpu_us = (time.process_time() - began) / len(frames) * 1e6
        first = f"{heard[0]} frames ({heard[0] * 20} ms)" if heard else "never"
        print(f"| {name} | {first} | " + " | ".join(map(str, false)) + f" | {cpu_us:.0f} us |")


if __name__ == "__main__":
    main()
