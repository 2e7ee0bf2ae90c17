"""When the next 20 ms frame may go out: real-time pacing against a monotonic clock, a lead that adapts.

Twilio plays media in order as it arrives and buffers whatever comes early; audio already in that
buffer can only be dropped by ``clear`` (which barge-in sends, so a long lead never slows a cut).
Frames go out at the rate they play, ``lead_s`` ahead of the playhead. Deadlines are absolute (the
estimated end of what has been sent), so a late wake-up does not accumulate into drift.

The lead is an adaptive jitter buffer, between ``min_lead_s`` and ``max_lead_s``:

- **Grow** when generation is close to or behind real time: a frame that comes with less than one
  frame left at Twilio (a near miss) adds a frame to the lead; one that comes after Twilio ran dry
  (an underrun: the caller heard silence) adds the silence's length, at least a frame.
- **Shrink** back, a twentieth of a frame per frame, while generation is ahead (a frame waited for
  the pacer, Twilio already holding the full lead).
- **Start with a cushion.** Whenever Twilio's buffer is empty (an utterance starts, or after an
  underrun), the first frame is held ``lead_s - min_lead_s`` so that much more audio is generated
  before playback starts: one longer pause instead of a stutter of short ones. At the least lead
  nothing is held, as before the lead adapted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

FRAME_S = 0.020
SHRINK_PER_FRAME = 1 / 20  # of a frame, per frame sent while ahead


class FramePacer:
    def __init__(
        self,
        lead_s: float,
        max_lead_s: float | None = None,
        frame_s: float = FRAME_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_lead_s = lead_s
        self.max_lead_s = max(lead_s, lead_s if max_lead_s is None else max_lead_s)
        self.lead_s = lead_s
        self.frame_s = frame_s
        self.clock = clock
        self.play_end: float | None = None  # when the audio sent so far will have finished playing
        self.held_since: float | None = None  # Twilio's buffer is empty and a frame waits: since when

    def delay(self) -> float:
        """Seconds to wait before the next frame may be sent (0: now)."""
        now = self.clock()
        if self.play_end is None or self.play_end <= now:  # nothing playing: start with the cushion
            if self.held_since is None:
                self.held_since = now
            return max(0.0, self.held_since + self.lead_s - self.min_lead_s - now)
        return max(0.0, self.play_end - self.lead_s - now)

    def sent(self, first_of_utterance: bool = False) -> None:
        """One frame went out: the playhead estimate moves one frame on, and the lead adapts. An
        utterance's first frame says nothing about generation speed (the pause before it is a turn)."""
        now = self.clock()
        if self.play_end is not None and not first_of_utterance:
            came_at = now if self.held_since is None else self.held_since  # a held frame came before its hold
            self._adapt(self.play_end - came_at)
        self.held_since = None
        start = now if self.play_end is None or self.play_end < now else self.play_end
        self.play_end = start + self.frame_s

    def _adapt(self, buffered_s: float) -> None:
        """``buffered_s``: audio left at Twilio when this frame came (negative: it had run dry that long)."""
        if buffered_s < 0:  # an underrun
            self.lead_s = min(self.max_lead_s, self.lead_s + max(self.frame_s, -buffered_s))
        elif buffered_s < self.frame_s:  # a near miss
            self.lead_s = min(self.max_lead_s, self.lead_s + self.frame_s)
        elif buffered_s >= self.lead_s - self.frame_s / 2:  # it waited for the pacer: generation is ahead
            self.lead_s = max(self.min_lead_s, self.lead_s - self.frame_s * SHRINK_PER_FRAME)

    def reset(self) -> None:
        """After ``clear``: Twilio's buffer is empty; the next frame starts afresh (the lead learnt stays)."""
        self.play_end = None
        self.held_since = None

    def buffered_s(self) -> float:
        """How much sent audio is still waiting to play at Twilio (estimated)."""
        return 0.0 if self.play_end is None else max(0.0, self.play_end - self.clock())
