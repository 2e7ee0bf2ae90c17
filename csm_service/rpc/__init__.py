"""gRPC: the engine servicer, the thin async client, and the generated csm.v1 code (gen/)."""
