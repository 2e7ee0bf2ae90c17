"""The speech service in process: :class:`~csm_service.speech.local.LocalSpeechService` over an engine."""
