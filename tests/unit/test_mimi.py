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
