"""Peer implementations run side by side with ours (benchmarks and equivalence tests)."""
