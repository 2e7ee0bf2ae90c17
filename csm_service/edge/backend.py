"""What the edge needs of its engines: a speech service, plus readiness and the drain's abort.

:class:`~csm_service.rpc.remote.RemoteSpeechService` is the one in use (``edge/app.py`` wires it);
the edge's handlers are written against this protocol and core types only.
"""

from __future__ import annotations

from typing import Protocol

from csm_service.core.service import SpeechService


class Backend(SpeechService, Protocol):
    has_been_ready: bool  # some engine has served since start (/health: "unavailable", not "loading")

    @property
    def device(self) -> str:
        """The engines' device as last reported (or the hint given at start)."""
        ...

    async def wait_until_serving(self, wait_s: float) -> bool:
        """Whether some engine serves, waiting up to ``wait_s`` for one."""
        ...

    def abort_all(self, detail: str) -> None:
        """The call-drain deadline passed: every utterance in flight ends with ShuttingDown(detail)."""
        ...
