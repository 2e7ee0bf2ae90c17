"""csm-service: a telephony text-to-speech microservice around Sesame's CSM-1B."""

__version__ = "0.1.0"
