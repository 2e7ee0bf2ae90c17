"""Mimi through moshi: encode 24 kHz prompts to codes, decode codes one frame at a time.

The streaming decoder holds one moshi streaming state for all engine slots ([max_batch] rows):
a slot's row is reset when a request is admitted to it, and an execution mask keeps the rows of
idle slots unchanged, so every live stream is decoded in one batched call per frame.
"""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path

import numpy as np
import torch

from csm_service.config import SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

MIMI_REPO = "kyutai/moshiko-pytorch-bf16"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
NUM_CODEBOOKS = 32
MAX_CODE = 2047  # Mimi's codebooks have 2048 entries; CSM's ids 2048..2050 are reserved


def resolve_mimi_weights(explicit: str | None, model_dir: Path | None = None) -> Path:
    """The Mimi weights: an explicit path, a file beside the CSM weights, or moshi's hub file."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"Mimi weights not found: {path}")
        return path
    if model_dir is not None:
        for candidate in sorted(model_dir.glob("tokenizer-*.safetensors")) + sorted(
            model_dir.glob("mimi*.safetensors")
        ):
            return candidate
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(MIMI_REPO, MIMI_FILE, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub, then say what is missing
        try:
            return Path(hf_hub_download(MIMI_REPO, MIMI_FILE))
        except Exception as exc:
            raise FileNotFoundError(
                f"Mimi weights {MIMI_REPO}/{MIMI_FILE} are not cached and the hub is unreachable; "
                "pass --mimi-weights PATH"
            ) from exc


def tiny_mimi_config() -> dict:
    """Mimi's framing (24 kHz, 12.5 Hz, 32 codebooks of 2048) at a test size: ~50x less compute.

    Only for random weights (``tiny-random``), so CPU tests run the whole pipeline quickly.
    """
    from moshi.models import loaders

    cfg = copy.deepcopy(loaders._mimi_config)
    dim = 64
    cfg["seanet"].update(dimension=dim, n_filters=8)
    cfg["quantizer"].update(dimension=32, input_dimension=dim, output_dimension=dim)
    cfg["transformer"].update(
        d_model=dim, num_heads=4, num_layers=1, dim_feedforward=128, input_dimension=dim, output_dimensions=[dim]
    )
    return cfg


def _randomize_codebooks(mimi: torch.nn.Module) -> None:
    """Give an untrained Mimi random codebooks: moshi starts them at zero (filled by k-means in
    training), and with all-zero codebooks every code decodes to the same audio."""
    from moshi.quantization.core_vq import EuclideanCodebook

    for module in mimi.modules():
        if isinstance(module, EuclideanCodebook):
            module.embedding_sum.normal_(0.0, 10.0)  # large enough that codes audibly differ
            module.cluster_usage.fill_(1.0)
            module._initialized.fill_(1.0)
            module._embedding = None  # recomputed from embedding_sum on first use


class MimiCodec:
    def __init__(self, weights: Path | None, device: torch.device, seed: int = 0, tiny: bool = False) -> None:
        from moshi.models import loaders

        if weights is None:
            log.warning("Mimi: random weights (%s); decoded audio is noise", "tiny" if tiny else "full size")
            torch.manual_seed(seed)
        elif tiny:
            raise ValueError("the tiny Mimi has no trained weights; tiny=True needs weights=None")
        self.mimi = loaders.get_mimi(
            str(weights) if weights else None,
            tiny_mimi_config() if tiny else None,
            device=device,
            num_codebooks=NUM_CODEBOOKS,
        )
        if weights is None:
            _randomize_codebooks(self.mimi)
        self.mimi.eval()
        # Streaming mode holds state in every Mimi module, encoder included; prompts are encoded by
        # a copy of the model that never streams, under its own lock, from any thread.
        self._encoder_model = copy.deepcopy(self.mimi)
        self._encode_lock = threading.Lock()
        self.device = device
        self.sample_rate = int(self.mimi.sample_rate)
        self.frame_size = SAMPLES_PER_FRAME
        self._stream_rows = 0

    # -- prompts --------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """pcm float32 [T] at 24 kHz -> codes int64 [32, ceil(T / 1920)]."""
        if pcm.ndim != 1 or pcm.size == 0:
            raise ValueError("audio to encode must be a non-empty mono array")
        pad = (-pcm.size) % self.frame_size
        wav = torch.from_numpy(np.pad(pcm.astype(np.float32), (0, pad))).to(self.device)
        with self._encode_lock:
            codes = self._encoder_model.encode(wav.view(1, 1, -1))  # [1, 32, F]
        return codes[0].cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def decode_all(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [32, F] -> pcm [F * 1920], whole sequence at once (a codec that is not streaming)."""
        if self._stream_rows:
            raise RuntimeError("decode_all needs a codec that is not in streaming mode")
        codes = codes.clamp(0, MAX_CODE).to(self.device)
        return self.mimi.decode(codes.unsqueeze(0))[0, 0].float()

    # -- streaming ------------------------------------------------------------------------------
    def start_streaming(self, num_rows: int) -> None:
        """Enter streaming mode for ``num_rows`` parallel streams (the engine's slots)."""
        if self._stream_rows:
            self.mimi._stop_streaming()  # moshi has no public "leave streaming_forever"
        self.mimi.streaming_forever(num_rows)
        self._stream_rows = num_rows

    def reset_rows(self, rows: torch.Tensor) -> None:
        """rows [num_rows] bool: forget the streaming history of these rows (new utterances)."""
        self.mimi.reset_streaming(rows.to(self.device))

    @torch.inference_mode()
    def decode_step(self, codes: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """codes [num_rows, 32], active [num_rows] bool -> pcm [num_rows, 1920] for one frame.

        Rows not active keep their state untouched (their output is meaningless).
        """
        self.mimi.set_exec_mask(active.to(self.device))
        frame = codes.clamp(0, MAX_CODE).to(self.device).unsqueeze(-1)  # [N, 32, 1]
        return self.mimi.decode(frame)[:, 0].float()  # [N, 1920]
