"""The model on its device: static KV caches, per-slot sampling state, prefill and batched step.

All per-slot state lives on the device in [max_batch] tensors, so a step reads nothing from the
host beyond two Python ints (how many rows, how many cache positions) and writes nothing back but
the frame's codes.
"""

from __future__ import annotations

import numpy as np
import torch

from csm_service.engine.frame import FrameInputs, frame_step
from csm_service.model.csm import CSM
from csm_service.model.fuse import fuse_projections


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name]


class ModelRunner:
    def __init__(self, model: CSM, max_batch: int, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        fuse_projections(self.model, pack_cpu=device.type == "cpu")
        self.model.setup_caches(max_batch)
        self.cfg = model.cfg
        self.max_batch = max_batch
        self.device = device
        self.dtype = dtype
        dim = self.cfg.backbone.dim
        self.hidden = torch.zeros(max_batch, dim, device=device, dtype=dtype)  # [N, D]
        self.positions = torch.zeros(max_batch, device=device, dtype=torch.int64)  # [N]
        self.is_active = torch.zeros(max_batch, device=device, dtype=torch.int64)  # [N] 0/1
        self.seeds = torch.zeros(max_batch, device=device, dtype=torch.int64)
        self.frame_index = torch.zeros(max_batch, device=device, dtype=torch.int64)
        self.temperature = torch.ones(max_batch, device=device, dtype=torch.float32)
        self.top_k = torch.ones(max_batch, device=device, dtype=torch.int64)

    @torch.inference_mode()
    def prefill(
        self, slot: int, tokens: np.ndarray, mask: np.ndarray, seed: int, temperature: float, top_k: int
    ) -> None:
        """Run the prompt tokens, mask [S, 33] into ``slot``'s cache and arm its sampling state."""
        prompt_len = tokens.shape[0]
        t = torch.from_numpy(tokens).to(self.device).unsqueeze(0)  # [1, S, 33]
        m = torch.from_numpy(mask).to(self.device).unsqueeze(0)
        positions = torch.arange(prompt_len, device=self.device).unsqueeze(0)  # [1, S]
        out = self.model.backbone(self.model.embed_rows(t, m), positions, slice(slot, slot + 1), prompt_len)
        self.hidden[slot] = out[0, -1]
        self.positions[slot] = prompt_len
        self.is_active[slot] = 1
        self.seeds[slot] = seed
        self.frame_index[slot] = 0
        self.temperature[slot] = temperature
        self.top_k[slot] = top_k

    def release(self, slot: int) -> None:
        self.is_active[slot] = 0
        self.positions[slot] = 0

    @torch.inference_mode()
    def step(self, num_rows: int, kv_len: int) -> torch.Tensor:
        """Advance slots [0, num_rows) by one frame -> codes [num_rows, K] on the device.

        ``kv_len`` must exceed every active slot's position. Idle rows compute and are ignored.
        """
        n = num_rows
        inputs = FrameInputs(
            hidden=self.hidden[:n],
            positions=self.positions[:n],
            seeds=self.seeds[:n],
            frame_index=self.frame_index[:n],
            temperature=self.temperature[:n],
            top_k=self.top_k[:n],
        )
        codes, next_hidden = frame_step(self.model, slice(0, n), inputs, kv_len)
        self.hidden[:n] = next_hidden
        self.positions[:n] += self.is_active[:n]
        self.frame_index[:n] += self.is_active[:n]
        return codes
