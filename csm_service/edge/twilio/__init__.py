"""Twilio Media Streams, natively: ``<Connect><Stream url="wss://HOST/v1/twilio/media-stream">``
connects straight to the edge, with no bridge in between. See :mod:`.call`."""
