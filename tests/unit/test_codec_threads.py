"""The codec from two threads (prompt encoding beside the engine's frame decode) gives exactly what
it gives sequentially (tiny random Mimi, CPU), and the moshi behaviour the locking relies on holds."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import torch

from csm_service.codec.mimi import MOSHI_CAPTURE_CALLS, MimiCodec
from csm_service.engine.threads import use_cpu_threads

NUM_ROWS = 3
NUM_FRAMES = 12


def _prompts() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.standard_normal(n).astype(np.float32) * 0.2 for n in (1920 * 3, 1920 * 5 + 100, 1920 * 2)]


def _frames() -> torch.Tensor:
    return torch.randint(0, 2048, (NUM_FRAMES, NUM_ROWS, 32), generator=torch.Generator().manual_seed(1))


def _decode_all_frames(codec: MimiCodec, frames: torch.Tensor) -> list[np.ndarray]:
    codec.start_streaming(NUM_ROWS)
    codec.reset_rows(torch.ones(NUM_ROWS, dtype=torch.bool))
    active = torch.tensor([True, False, True])
    return [codec.decode_step(frame, active).clone().numpy() for frame in frames]


def test_concurrent_encode_and_decode_equal_sequential():
    codec = MimiCodec(None, torch.device("cpu"), seed=3, tiny=True)
    prompts, frames = _prompts(), _frames()
    want_codes = [codec.encode(p) for p in prompts]
    want_pcm = _decode_all_frames(codec, frames)

    got_codes: list[list[np.ndarray]] = []
    got_pcm: list[np.ndarray] = []
    start = threading.Barrier(2)
    decoding_done = threading.Event()
    errors: list[BaseException] = []
    # The same CPU thread count as the sequential run: another count sums in another order (last bits).
    cpu_threads = torch.get_num_threads()

    def encoder() -> None:
        try:
            use_cpu_threads(cpu_threads)
            start.wait()
            while not decoding_done.is_set() or not got_codes:  # at least one full round, overlapping
                got_codes.append([codec.encode(p) for p in prompts])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def decoder() -> None:
        try:
            use_cpu_threads(cpu_threads)
            start.wait()
            got_pcm.extend(_decode_all_frames(codec, frames))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            decoding_done.set()

    threads = [threading.Thread(target=encoder), threading.Thread(target=decoder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for round_codes in got_codes:
        for got, want in zip(round_codes, want_codes, strict=True):
            np.testing.assert_array_equal(got, want)
    assert len(got_pcm) == NUM_FRAMES
    for got, want in zip(got_pcm, want_pcm, strict=True):
        np.testing.assert_array_equal(got[[0, 2]], want[[0, 2]])  # the active rows


def test_encoder_never_streams_and_moshi_compile_is_off():
    from moshi.utils import compile as moshi_compile

    codec = MimiCodec(None, torch.device("cpu"), seed=3, tiny=True)
    codec.start_streaming(2)
    assert codec.mimi.is_streaming and not codec._encoder_model.is_streaming
    assert moshi_compile._compile_disabled  # the whole process: no lazy torch.compile from any thread


def test_moshi_captures_on_the_second_call():
    """MOSHI_CAPTURE_CALLS rests on CUDAGraphed's default warm-up of one eager call (moshi 0.2.x);
    Mimi builds its graphed modules without overriding it."""
    from moshi.models import compression
    from moshi.utils.compile import CUDAGraphed

    assert inspect.signature(CUDAGraphed.__init__).parameters["warmup_steps"].default == 1
    assert "warmup_steps" not in inspect.getsource(compression.MimiModel._init_streaming_state)
    assert MOSHI_CAPTURE_CALLS == 2
