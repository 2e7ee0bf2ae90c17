"""Mimi through moshi: weights from a file, prompt encoding, streaming == whole-sequence decode."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from csm_service.codec.mimi import MimiCodec


def test_weights_file_streaming_and_encode(tmp_path):
    random_codec = MimiCodec(None, torch.device("cpu"), seed=4)
    path = tmp_path / "mimi.safetensors"
    save_file({k: v.contiguous() for k, v in random_codec.mimi.state_dict().items()}, str(path))
    codec = MimiCodec(path, torch.device("cpu"))  # the real loading path, on our own file

    codes = torch.randint(0, 2048, (32, 6), generator=torch.Generator().manual_seed(0))
    whole = codec.decode_all(codes)
    np.testing.assert_allclose(whole.numpy(), random_codec.decode_all(codes).numpy(), atol=1e-6)

    codec.start_streaming(3)
    codec.reset_rows(torch.ones(3, dtype=torch.bool))
    active = torch.tensor([True, False, True])
    frames = [codec.decode_step(codes[:, i].expand(3, 32), active) for i in range(6)]
    streamed = torch.cat(frames, dim=1)  # [3, 6 * 1920]
    assert streamed.shape == (3, 6 * 1920)
    np.testing.assert_allclose(streamed[0].numpy(), whole.numpy(), atol=1e-5)
    np.testing.assert_allclose(streamed[2].numpy(), whole.numpy(), atol=1e-5)

    pcm = np.sin(np.arange(24_000 + 100) / 24_000 * 2 * np.pi * 300).astype(np.float32) * 0.3
    prompt = codec.encode(pcm)  # encoding works while the decoder streams
    assert prompt.shape == (32, 13) and prompt.dtype == np.int64 and 0 <= prompt.min() and prompt.max() < 2048


def test_bf16_decode_is_float32_audio_close_to_fp32():
    """--mimi-dtype bfloat16 decodes the same stream: float32 audio out, near fp32's (random tiny Mimi)."""
    codes = torch.randint(0, 2048, (6, 32), generator=torch.Generator().manual_seed(1))  # [F, K]
    audio = {}
    for dtype in (torch.float32, torch.bfloat16):
        codec = MimiCodec(None, torch.device("cpu"), seed=2, tiny=True, decode_dtype=dtype)
        codec.start_streaming(2)
        active = torch.tensor([True, False])
        frames = [codec.decode_step(frame.expand(2, -1), active)[0] for frame in codes]
        assert frames[0].dtype == torch.float32 and {p.dtype for p in codec.mimi.parameters()} == {dtype}
        assert {p.dtype for p in codec._encoder_model.parameters()} == {torch.float32}  # prompts: fp32
        audio[dtype] = torch.cat(frames).double()
    reference, bf16 = audio[torch.float32], audio[torch.bfloat16]
    snr_db = 10 * torch.log10(reference.pow(2).sum() / (bf16 - reference).pow(2).sum())
    assert snr_db > 20, snr_db
