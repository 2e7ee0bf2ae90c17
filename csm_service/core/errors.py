"""What can go wrong with a speech request, and the stable texts clients match on.

The exceptions are raised by a :class:`~csm_service.core.service.SpeechService` (in process or over
gRPC, which maps them to and from status codes); the edge turns them into HTTP and WebSocket
errors with the texts below.
"""

from __future__ import annotations

# The seed contract's texts: clients match on these.
MODEL_NOT_LOADED = "Model not loaded"
INVALID_MESSAGE_FORMAT = "Invalid message format"
EMPTY_TEXT = "Empty text"
# Ours, for what the seed does not name.
OVERLOADED = "Overloaded"
SYNTHESIS_FAILED = "Synthesis failed"
TIMED_OUT = "Timed out"
MESSAGE_TOO_LARGE = "Message too large"
TEXT_TOO_LONG = "Text too long"
UNKNOWN_VOICE = "Unknown voice profile"
UNKNOWN_TYPE = "Unknown message type"
TOO_MANY_IN_FLIGHT = "Too many requests in flight"
TOO_MANY_SESSIONS = "Too many sessions"
UNAUTHORIZED = "Unauthorized"
RATE_LIMITED = "Rate limit exceeded"
SHUTTING_DOWN = "Shutting down"
WORKER_LOST = "Engine worker lost"


class SpeechError(Exception):
    """A speech request failed; ``str(exc)`` is the detail a client may see."""


class InvalidRequest(SpeechError, ValueError):
    """A request field is wrong; ``field`` names it (gRPC INVALID_ARGUMENT, HTTP 422)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class Overloaded(SpeechError, RuntimeError):
    """The waiting queue is full (gRPC RESOURCE_EXHAUSTED, HTTP 503)."""


class EngineUnavailable(SpeechError, RuntimeError):
    """No engine serves: loading, warming up, draining or stopped (gRPC UNAVAILABLE, HTTP 503)."""


class WorkerLost(EngineUnavailable):
    """The worker went away mid-utterance and no other one could take the utterance over."""


class TimedOut(SpeechError, TimeoutError):
    """The utterance took longer than the caller's deadline (gRPC DEADLINE_EXCEEDED, HTTP 504)."""


class SynthesisFailed(SpeechError, RuntimeError):
    """The engine failed the utterance (a device error, an out-of-memory; gRPC INTERNAL, HTTP 500)."""


class ShuttingDown(SpeechError, RuntimeError):
    """The service is stopping and ended the utterance (the edge's call-drain deadline; HTTP 503)."""
