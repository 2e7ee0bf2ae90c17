"""The static shapes a frame step is captured at: batch buckets, and cache-length buckets per batch.

A CUDA graph replays fixed shapes, so live rows are padded up to a batch bucket and attention reads
the cache up to a length bucket. Padding the length costs cache reads; a separate graph per length
costs capture time and start-up memory. A length bucket below the full cache is worth its own
graph only where reading the full cache instead would add a noticeable share to what the step
reads anyway (the weights, ~9 GB per frame for CSM-1B in bf16):

    batch * kv_bytes_per_position * (max_len - length) > GRAPH_PADDING_FRACTION * step_weight_bytes

For CSM-1B in bf16 (32 KiB of backbone KV per position and row) that keeps one graph per batch
bucket up to batch 8, and 2-4 lengths above: 14 graphs at max batch 64 instead of 28.
"""

from __future__ import annotations

from csm_service.config import CsmConfig, TransformerConfig

MIN_KV_BUCKET = 256
GRAPH_PADDING_FRACTION = 0.1  # extra reads (vs the weights) a batch bucket tolerates before it gets length buckets


def powers_of_two_upto(limit: int, start: int = 1) -> tuple[int, ...]:
    """start, 2*start, ... below ``limit``, then ``limit`` itself: the buckets a value rounds up to."""
    out, value = [], start
    while value < limit:
        out.append(value)
        value *= 2
    return (*out, limit)


def round_up(value: int, buckets: tuple[int, ...]) -> int:
    for bucket in buckets:
        if value <= bucket:
            return bucket
    raise ValueError(f"{value} exceeds the largest bucket {buckets[-1]}")


def kv_buckets(max_len: int) -> tuple[int, ...]:
    """Every cache-length bucket: powers of two from MIN_KV_BUCKET, then ``max_len``."""
    return powers_of_two_upto(max_len, min(MIN_KV_BUCKET, max_len))


def graph_lengths(
    max_batch: int, max_len: int, kv_bytes_per_position: int, step_weight_bytes: int
) -> dict[int, tuple[int, ...]]:
    """batch bucket -> the cache lengths captured for it (always ending with ``max_len``)."""
    lengths_all = kv_buckets(max_len)
    shapes = {}
    for batch in powers_of_two_upto(max_batch):
        padding_budget = GRAPH_PADDING_FRACTION * step_weight_bytes
        short = tuple(n for n in lengths_all[:-1] if batch * kv_bytes_per_position * (max_len - n) > padding_budget)
        shapes[batch] = (*short, max_len)
    return shapes


def _layer_weights(cfg: TransformerConfig) -> int:
    """Parameters of one block's projections (norms are negligible)."""
    attn = cfg.dim * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim + cfg.num_heads * cfg.head_dim * cfg.dim
    return attn + 3 * cfg.dim * cfg.mlp_dim


def step_weight_bytes(cfg: CsmConfig, itemsize: int) -> int:
    """Weight bytes one frame step reads: the backbone once, the depth decoder once per decoder call
    (31), the heads (codebook 0, then one slice of ``audio_head`` per codebook) and the projection."""
    backbone = cfg.backbone.num_layers * _layer_weights(cfg.backbone)
    decoder = cfg.decoder.num_layers * _layer_weights(cfg.decoder)
    heads = cfg.backbone.dim * cfg.audio_vocab_size + (cfg.num_codebooks - 1) * cfg.decoder.dim * cfg.audio_vocab_size
    projection = cfg.backbone.dim * cfg.decoder.dim
    return itemsize * (backbone + (cfg.num_codebooks - 1) * decoder + heads + cfg.num_codebooks * projection)


def backbone_kv_bytes_per_position(cfg: CsmConfig, itemsize: int) -> int:
    """Backbone keys and values of one position of one row, all layers."""
    b = cfg.backbone
    return 2 * b.num_layers * b.num_kv_heads * b.head_dim * itemsize
