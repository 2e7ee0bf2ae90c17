"""When the next 20 ms frame may go out: real-time pacing against a monotonic clock, a small lead.

Twilio plays media in order as it arrives and buffers whatever comes early; audio already in that
buffer can only be dropped by ``clear``. So frames go out at the rate they play, ``lead_s`` ahead
of the playhead to ride out network jitter. Deadlines are absolute (the estimated end of what has
been sent), so a late wake-up does not accumulate into drift; after an underrun (nothing to send
for a while) the playhead restarts at "now".
"""

from __future__ import annotations

import time
from collections.abc import Callable

FRAME_S = 0.020


class FramePacer:
    def __init__(self, lead_s: float, frame_s: float = FRAME_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.lead_s = lead_s
        self.frame_s = frame_s
        self.clock = clock
        self.play_end: float | None = None  # when the audio sent so far will have finished playing

    def delay(self) -> float:
        """Seconds to wait before the next frame may be sent (0: now)."""
        if self.play_end is None:
            return 0.0
        return max(0.0, self.play_end - self.lead_s - self.clock())

    def sent(self) -> None:
        """One frame went out: the playhead estimate moves one frame on."""
        now = self.clock()
        start = now if self.play_end is None or self.play_end < now else self.play_end
        self.play_end = start + self.frame_s

    def reset(self) -> None:
        """After ``clear``: Twilio's buffer is empty, so the next frame plays at once."""
        self.play_end = None

    def buffered_s(self) -> float:
        """How much sent audio is still waiting to play at Twilio (estimated)."""
        return 0.0 if self.play_end is None else max(0.0, self.play_end - self.clock())
