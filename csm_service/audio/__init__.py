"""Audio conversion shared by the edge and the engine: numpy, soxr and audioop only (no torch)."""
