"""Mimi through moshi: encode 24 kHz prompts to codes, decode codes one frame at a time.

The streaming decoder holds one moshi streaming state for all engine slots ([max_batch] rows):
a slot's row is reset when a request is admitted to it, and an execution mask keeps the rows of
idle slots unchanged, so every live stream is decoded in one batched call per frame. A call
decodes the first n rows, those the frame step ran: on CPU only those are computed
(codec/row_window.py), on CUDA moshi's graphs run every row and the rest stay idle.

Threads: the engine thread decodes, caller threads encode voice prompts. moshi keeps process-wide
state that both would otherwise share:

- ``torch_compile_lazy`` (rope and other small functions) compiles through Inductor/Triton on CUDA,
  which needs a C compiler and Python headers at run time (the image has neither), recompiles
  when the prompt length changes, and would compile from two threads at once. The codec turns it off
  for the process (:func:`disable_moshi_compile`, what ``NO_TORCH_COMPILE=1`` does at import);
  moshi's CUDA graphs still remove the launch overhead of the per-frame decode.
- ``CUDAGraphed`` sets a process-global "in a CUDA graph" flag and captures lazily (on the first
  decode calls after ``start_streaming``). Only the streaming decoder uses it: prompts are encoded
  by a separate instance that never streams, so the flag is the engine thread's alone.
- A CUDA graph capture forbids GPU work from any other thread while it runs. ``encode`` and every
  decode call until moshi's graphs are captured hold one lock, so they never overlap; after that
  the frame decode runs without it: a long prompt being encoded never stalls a live stream's frame
  (one lock around every decode would). Other captures (the engine's) can hold it via ``exclusive()``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from csm_service.codec.moshi_internals import mark_codebook_initialized, moshi_mimi_config
from csm_service.core.constants import NUM_CODEBOOKS, NUM_MIMI_CODES, SAMPLES_PER_FRAME

if TYPE_CHECKING:
    from csm_service.codec.row_window import RowWindows

log = logging.getLogger(__name__)

MIMI_REPO = "kyutai/moshiko-pytorch-bf16"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
MAX_CODE = NUM_MIMI_CODES - 1  # CSM's audio ids above it (2048..2050) are reserved and never reach Mimi
# moshi's CUDAGraphed (warmup_steps=1) runs eagerly on its first call and captures on its second:
# after this many decode calls following start_streaming, every graph of the decoder is captured.
MOSHI_CAPTURE_CALLS = 2


# moshi's own compile switch, entered once and held for the life of the process (never exited).
_MOSHI_NO_COMPILE = contextlib.ExitStack()


@functools.cache
def disable_moshi_compile() -> None:
    """Turn off moshi's lazy ``torch.compile`` for the whole process (once; later calls do nothing).

    ``NO_TORCH_COMPILE=1`` does the same, but only if set before moshi is imported (the image sets
    it); this works whatever the environment and import order: it enters moshi's public
    ``no_compile()`` switch and never leaves it. moshi checks the switch on every call.
    """
    from moshi.utils import compile as moshi_compile

    if not hasattr(moshi_compile, "no_compile"):
        log.warning("moshi changed how it disables torch.compile; set NO_TORCH_COMPILE=1 instead")
        return
    _MOSHI_NO_COMPILE.enter_context(moshi_compile.no_compile())


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
    cfg = moshi_mimi_config()
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
            mark_codebook_initialized(module)  # its codebook is recomputed from embedding_sum on first use


class MimiCodec:
    def __init__(
        self,
        weights: Path | None,
        device: torch.device,
        seed: int = 0,
        tiny: bool = False,
        decode_dtype: torch.dtype = torch.float32,
    ) -> None:
        """``decode_dtype``: the streaming decoder's weights and arithmetic (audio comes out float32
        either way; prompts are always encoded in float32). bfloat16 decodes ~2.5x faster on a CPU
        with native bf16 (docs/benchmarks.md)."""
        from moshi.models import loaders

        disable_moshi_compile()
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
        # a copy of the model that never streams (so never touches moshi's CUDA-graph state).
        self._encoder_model = copy.deepcopy(self.mimi)
        self.mimi.to(decode_dtype)
        self.decode_dtype = decode_dtype
        self._gpu_lock = threading.RLock()  # no capture overlaps other GPU work (module docstring)
        self.device = device
        self.sample_rate = int(self.mimi.sample_rate)
        self.frame_size = SAMPLES_PER_FRAME
        self._streaming = contextlib.ExitStack()  # moshi's streaming(): closing it leaves streaming mode
        self._stream_rows = 0
        self._decode_calls = 0  # decode calls since start_streaming (moshi captures on the first ones)
        self._row_windows: RowWindows | None = None  # CPU: decode a call's rows only
        self._idle_codes = self._idle_mask = torch.empty(0)  # CUDA: a call's rows padded to the full count

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold off prompt encoding, e.g. around a CUDA graph capture on another part of the model."""
        with self._gpu_lock:
            yield

    # -- prompts --------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """pcm float32 [T] at 24 kHz -> codes int64 [32, ceil(T / 1920)]."""
        if pcm.ndim != 1 or pcm.size == 0:
            raise ValueError("audio to encode must be a non-empty mono array")
        pad = (-pcm.size) % self.frame_size
        wav = torch.from_numpy(np.pad(pcm.astype(np.float32), (0, pad)))  # [T] on the host
        with self._gpu_lock:  # every device operation of the encode, copies included
            assert not self._encoder_model.is_streaming, "the prompt encoder must never stream"
            codes = self._encoder_model.encode(wav.to(self.device).view(1, 1, -1))  # [1, 32, F]
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
        with self._gpu_lock:
            self._streaming.close()  # leave the previous streaming state, if any
            self._streaming = self.mimi.streaming(num_rows)  # fresh state: moshi captures its graphs again
            self._stream_rows = num_rows
            self._decode_calls = 0
            if self.device.type == "cuda":  # moshi's graphs decode every row: the rows past a call's are idle
                self._row_windows = None
                self._idle_codes = torch.zeros(num_rows, NUM_CODEBOOKS, dtype=torch.int64, device=self.device)
                self._idle_mask = torch.zeros(num_rows, dtype=torch.bool, device=self.device)
            else:
                from csm_service.codec.row_window import RowWindows

                self._row_windows = RowWindows(self.mimi)  # a call decodes its rows only (codec/row_window.py)

    def reset_rows(self, rows: torch.Tensor) -> None:
        """rows [num_rows] bool: forget the streaming history of these rows (new utterances)."""
        self.mimi.reset_streaming(rows.to(self.device))

    @torch.inference_mode()
    def decode_step(self, codes: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """codes [n, 32], active [n] bool for the first n streaming rows -> pcm [n, 1920], one frame.

        Rows not active, and rows from n on, keep their state untouched (an inactive row's output is
        meaningless). On CPU only the n rows are computed. The first calls after
        ``start_streaming`` (moshi captures its graphs in them) wait for an encode in flight.
        """
        if self._decode_calls >= MOSHI_CAPTURE_CALLS:
            return self._decode_rows(codes, active)
        with self._gpu_lock:
            self._decode_calls += 1
            return self._decode_rows(codes, active)

    def _decode_rows(self, codes: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        n = codes.shape[0]
        if not 0 < n <= self._stream_rows or active.shape != (n,):
            raise ValueError(
                f"decode_step: {n} rows with a mask of {tuple(active.shape)} ({self._stream_rows} streaming)"
            )
        if n == self._stream_rows:
            return self._decode_frame(codes, active)
        if self._row_windows is not None:
            return self._row_windows.call(n, lambda: self._decode_frame(codes, active))
        self._idle_codes[:n] = codes  # CUDA: the full row count, the rows from n on idle
        self._idle_mask.zero_()
        self._idle_mask[:n] = active
        return self._decode_frame(self._idle_codes, self._idle_mask)[:n]

    def _decode_frame(self, codes: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        self.mimi.set_exec_mask(active.to(self.device))
        frame = codes.clamp(0, MAX_CODE).to(self.device).unsqueeze(-1)  # [N, 32, 1]
        return self.mimi.decode(frame)[:, 0].float()  # [N, 1920]
