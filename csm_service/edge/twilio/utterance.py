"""One thing said on a call, from the ``say`` that asked for it to Twilio's mark echo."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from csm_service.api.speak import SpeakParams
from csm_service.edge.twilio.pacer import FRAME_S
from csm_service.limits import InflightLease
from csm_service.voices import Voice

# queued -> speaking (generating and sending) -> sent (mark sent) -> played (mark echoed).
# Barge-in ends it as "cleared" (nothing was sent) or "interrupted" (some audio had gone out).
QUEUED, SPEAKING, SENT, PLAYED = "queued", "speaking", "sent", "played"
CLEARED, INTERRUPTED, FAILED = "cleared", "interrupted", "failed"
UNFINISHED = (QUEUED, SPEAKING)
MEDIA_FRAME_MS = round(FRAME_S * 1000)


@dataclass
class Utterance:
    utterance_id: str  # also the name of its Twilio mark
    params: SpeakParams
    voice: Voice | None
    status: str = QUEUED
    error: str | None = None
    frames_sent: int = 0
    heard_ms: int | None = None  # for an interrupted utterance: audio that had played (estimated)
    seed: int | None = None
    created_at: float = field(default_factory=time.monotonic)
    first_frame_ms: float | None = None  # say -> first frame sent to Twilio
    ends_at: float | None = None  # when its last frame should finish playing (monotonic, estimated)
    lease: InflightLease | None = None  # its place among the tenant's utterances in flight

    def release(self) -> None:
        """No longer in flight (generated, failed, cleared or dropped); safe to call again."""
        if self.lease is not None:
            self.lease.release()

    def first_frame_sent(self) -> None:
        if self.first_frame_ms is None:
            self.first_frame_ms = (time.monotonic() - self.created_at) * 1000

    def cut(self, unplayed_s: float) -> None:
        """Barge-in: nothing more of it plays. ``unplayed_s``: of what was sent, how much was still
        waiting in Twilio's buffer (so the caller never heard it)."""
        if self.frames_sent == 0:
            self.status = CLEARED
            return
        self.status = INTERRUPTED
        self.heard_ms = max(0, round(self.frames_sent * MEDIA_FRAME_MS - unplayed_s * 1000))

    def summary(self) -> dict[str, object]:
        return {
            "utterance_id": self.utterance_id,
            "text": self.params.text,
            "voice_profile_id": self.params.voice_profile_id,
            "status": self.status,
            "error": self.error,
            "frames_sent": self.frames_sent,
            "duration_ms": self.frames_sent * MEDIA_FRAME_MS,
            "heard_ms": self.heard_ms,
            "seed": self.seed,
            "time_to_first_frame_ms": round(self.first_frame_ms, 1) if self.first_frame_ms is not None else None,
        }
