"""Backbone KV of stable prompt prefixes (voice prompts), keyed by content, bounded, LRU-evicted.

A voice prompt is hundreds of positions (its transcript and up to a few hundred audio frames) that
precede every request using the voice. Its keys and values depend only on its tokens (positions
start at 0), so they are computed once and copied into the slot of each later request; only the
rest of the prompt is prefilled. Entries live on the engine's device.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

# One entry: per backbone layer, (keys, values) of shape [P, Hkv, Dh].
PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]


def prefix_key(tokens: np.ndarray, mask: np.ndarray) -> str:
    """The content hash of prompt rows [P, 33] (tokens and mask)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(tokens, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(mask, dtype=bool).tobytes())
    digest.update(str(tokens.shape).encode())
    return digest.hexdigest()


def kv_bytes(kv: PrefixKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


@dataclass
class PrefixCacheStats:
    evictions: int = 0  # hits and misses are the engine's counters (csm_engine_prefix_cache_*)


class PrefixCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[str, PrefixKV] = OrderedDict()
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> PrefixKV | None:
        kv = self._entries.get(key)
        if kv is not None:
            self._entries.move_to_end(key)
        return kv

    def put(self, key: str, kv: PrefixKV) -> bool:
        """Keep ``kv`` (evicting the least recently used); False if it can never fit."""
        size = kv_bytes(kv)
        if size > self.capacity_bytes or key in self._entries:
            return False
        while self.used_bytes + size > self.capacity_bytes:
            _, old = self._entries.popitem(last=False)
            self.used_bytes -= kv_bytes(old)
            self.stats.evictions += 1
        self._entries[key] = kv
        self.used_bytes += size
        return True
