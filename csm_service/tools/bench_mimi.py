"""Mimi's batched streaming decode per 80 ms frame, for ``csm-service bench frame`` (its "mimi" part).

Random weights of the model's Mimi size (full size, or the test-size codec for ``--config tiny``),
in float32 and in bfloat16 (``--mimi-dtype``), with bf16's audio compared against fp32's on the same
code stream.
"""

from __future__ import annotations

import time

import torch

from csm_service.core.constants import NUM_CODEBOOKS, NUM_MIMI_CODES
from csm_service.tools.bench_common import synchronize

WARMUP_FRAMES = 3  # untimed decode calls first (moshi's lazy state)


def time_mimi(device: torch.device, config: str, rows_list: str, frames: int) -> list[dict]:
    """Mimi's batched streaming decode per 80 ms frame (random weights of the model's Mimi size), in
    float32 and bfloat16 (``--mimi-dtype``), and how far bf16's audio is from fp32's (SNR, dB)."""
    from csm_service.codec.mimi import MimiCodec

    generator = torch.Generator().manual_seed(0)
    sequence = torch.randint(0, NUM_MIMI_CODES, (frames, NUM_CODEBOOKS), generator=generator)  # [F, K]
    out, audio = [], {}
    for dtype in (torch.float32, torch.bfloat16):
        codec = MimiCodec(None, device, seed=0, tiny=config == "tiny", decode_dtype=dtype)
        for rows in (int(r) for r in rows_list.split(",")):
            codec.start_streaming(rows)
            active = torch.ones(rows, dtype=torch.bool, device=device)
            for i in range(WARMUP_FRAMES):
                codec.decode_step(sequence[i].expand(rows, -1).to(device), active)
            codec.reset_rows(active)
            pcm = []
            synchronize(device)
            start = time.perf_counter()
            for i in range(frames):
                pcm.append(codec.decode_step(sequence[i].expand(rows, -1).to(device), active)[0].cpu())
            synchronize(device)
            elapsed = time.perf_counter() - start
            audio[dtype] = torch.cat(pcm)  # row 0, after a reset: the same stream in both dtypes
            out.append(
                {"dtype": str(dtype).removeprefix("torch."), "rows": rows, "ms_per_frame": 1000 * elapsed / frames}
            )
        del codec
    reference, bf16 = audio[torch.float32].double(), audio[torch.bfloat16].double()
    snr_db = float(10 * torch.log10(reference.pow(2).sum() / (bf16 - reference).pow(2).sum().clamp_min(1e-30)))
    for row in out:
        row["bf16_snr_db_vs_fp32"] = snr_db
    return out
