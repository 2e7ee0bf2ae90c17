"""Tempo change without pitch change: streaming WSOLA (waveform-similarity overlap-add).

CSM has no speaking-rate control, so OpenAI's ``speed`` (0.25 to 4.0) is applied to the audio.
Output frames of 40 ms are laid down every 20 ms (Hann windows at 50 % overlap sum to one). Frame
``k`` is read from the input near ``k * 20 ms * speed``, shifted by up to 10 ms to where it best
continues the previous frame's waveform, so periods line up and the pitch is kept. Chunks in,
chunks out: the result does not depend on how the input was cut.
"""

from __future__ import annotations

import numpy as np

from csm_service.core.constants import MAX_SPEED, MIN_SPEED, SAMPLE_RATE


class TimeStretch:
    def __init__(self, speed: float, sample_rate: int = SAMPLE_RATE) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be from {MIN_SPEED} to {MAX_SPEED}, got {speed}")
        self.speed = speed
        self.frame = int(0.040 * sample_rate)
        self.hop = self.frame // 2
        self.tolerance = int(0.010 * sample_rate)
        n = np.arange(self.frame)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / self.frame)).astype(np.float32)  # periodic Hann
        # A hop of silence in front, so the first real sample is under a full window sum;
        # the first hop of output (over that silence) is dropped.
        self._buf = np.zeros(self.hop, dtype=np.float32)  # input from absolute index _start on
        self._start = 0
        self._received = self.hop  # absolute end of the input so far
        self._k = 0  # next output frame
        self._prev: int | None = None  # absolute input position of the previous frame
        self._tail = np.zeros(self.hop, dtype=np.float32)  # second half of the previous frame
        self._to_drop = self.hop
        self._produced = 0  # samples returned so far

    @property
    def is_identity(self) -> bool:
        return self.speed == 1.0

    def _slice(self, begin: int, end: int) -> np.ndarray:
        return self._buf[begin - self._start : end - self._start]

    def process(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        """float32 [T] -> float32 [about T / speed]; ``last`` flushes what is held back."""
        if self.is_identity:
            return np.asarray(pcm, dtype=np.float32)
        self._buf = np.concatenate([self._buf, np.asarray(pcm, dtype=np.float32)])
        self._received += len(pcm)
        end_of_input = self._received
        wanted = round((end_of_input - self.hop) / self.speed)  # output samples in all, once ``last``
        if last:  # silence behind the end, enough for the last frames and their searches
            pad = int(3 * self.hop * self.speed) + 2 * (self.frame + self.tolerance + self.hop)
            self._buf = np.concatenate([self._buf, np.zeros(pad, dtype=np.float32)])
        available = self._start + len(self._buf)
        out: list[np.ndarray] = []
        while True:
            nominal = round(self._k * self.hop * self.speed)
            if last and self._k * self.hop >= wanted + 2 * self.hop:
                break
            low, high = max(0, nominal - self.tolerance), nominal + self.tolerance
            need = high + self.frame if self._prev is None else max(high, self._prev + self.hop) + self.frame
            if need > available:
                break
            if self._prev is None:
                position = nominal
            else:
                natural = self._slice(self._prev + self.hop, self._prev + self.hop + self.frame)
                region = self._slice(low, high + self.frame)
                scores = np.correlate(region, natural, mode="valid")  # [high - low + 1]
                position = low + int(np.argmax(scores))
            frame = self._slice(position, position + self.frame) * self.window
            out.append(self._tail + frame[: self.hop])
            self._tail = frame[self.hop :].copy()
            self._prev = position
            self._k += 1
            keep_from = min(self._prev + self.hop, max(0, round(self._k * self.hop * self.speed) - self.tolerance))
            if keep_from > self._start:
                self._buf = self._buf[keep_from - self._start :]
                self._start = keep_from
        result = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        if self._to_drop:
            dropped = min(self._to_drop, len(result))
            result, self._to_drop = result[dropped:], self._to_drop - dropped
        if last:
            result = result[: max(0, wanted - self._produced)]
        self._produced += len(result)
        return result
