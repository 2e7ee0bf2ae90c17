"""The domain: what a speech request is, what comes back, the errors and their user-facing texts.

Every layer speaks these types (the edge, the gRPC boundary, the engine, the command-line tools);
this package imports neither torch nor protobuf nor anything else of csm_service, so any layer may
import it and it can never pull a heavy dependency into the edge.
"""
