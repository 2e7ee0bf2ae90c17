"""The CSM model in plain PyTorch: Llama-3.2 blocks, the CSM heads, and checkpoint loading."""
