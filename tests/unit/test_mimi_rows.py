"""Mimi decodes a frame's rows only (codec/row_window.py): the same audio and the same streaming
state as the masked decode of every row, with rows past the call's untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from moshi.modules.streaming import State

from csm_service.codec.mimi import MimiCodec
from csm_service.codec.row_window import row_fields

ROWS = 4
# (rows in the call, which of them are active), with resets between, as the engine's slots come and go
SCHEDULE = (
    ("reset", (0, 1, 2, 3)),
    *[("decode", (True, True))] * 3,
    *[("decode", (True, False, True, True))] * 2,
    *[("decode", (True,))] * 2,
    ("reset", (2,)),
    *[("decode", (True, True, True))] * 3,
    ("decode", (False, True, True, True)),
)


def _state_tensors(codec: MimiCodec) -> dict[str, torch.Tensor]:
    out = {}
    for name, state in codec.mimi.get_streaming_state().items():
        for field in row_fields(state):
            out[f"{name}.{field}"] = getattr(state, field)
        cache = getattr(state, "kv_cache", None)
        if cache is not None:
            out[f"{name}.kv"], out[f"{name}.end"] = cache.cache, cache.end_offset
    return out


def test_windowed_decode_equals_masked_decode_of_every_row():
    full, windowed = (MimiCodec(None, torch.device("cpu"), seed=3, tiny=True) for _ in range(2))
    for codec in (full, windowed):
        codec.start_streaming(ROWS)
    codes = torch.randint(0, 2048, (len(SCHEDULE), ROWS, 32), generator=torch.Generator().manual_seed(5))
    decoded_rows = 0
    for step, (what, arg) in enumerate(SCHEDULE):
        if what == "reset":
            mask = torch.zeros(ROWS, dtype=torch.bool)
            mask[list(arg)] = True
            full.reset_rows(mask)
            windowed.reset_rows(mask)
            continue
        n = len(arg)
        active = torch.tensor(arg)
        padded = torch.zeros(ROWS, dtype=torch.bool)
        padded[:n] = active
        want = full.decode_step(codes[step], padded)  # [ROWS, 1920]
        got = windowed.decode_step(codes[step, :n], active)  # [n, 1920]
        assert got.shape == (n, 1920)
        for row in range(n):
            if arg[row]:
                torch.testing.assert_close(got[row], want[row], atol=1e-5, rtol=1e-5)
                decoded_rows += 1
    assert decoded_rows == 3 * 2 + 2 * 3 + 2 + 3 * 3 + 3
    # Every row's streaming state ends the same: updates reached the full state, rows past n kept theirs.
    want_state, got_state = _state_tensors(full), _state_tensors(windowed)
    assert want_state.keys() == got_state.keys() and len(want_state) > 10
    for key, value in want_state.items():
        torch.testing.assert_close(got_state[key], value, atol=1e-5, rtol=1e-5, msg=key)


def test_a_call_checks_its_rows():
    codec = MimiCodec(None, torch.device("cpu"), seed=3, tiny=True)
    codec.start_streaming(2)
    with pytest.raises(ValueError, match="rows"):
        codec.decode_step(torch.zeros(3, 32, dtype=torch.int64), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="rows"):
        codec.decode_step(torch.zeros(1, 32, dtype=torch.int64), torch.ones(2, dtype=torch.bool))


def test_an_unknown_state_layout_is_refused():
    @dataclasses.dataclass
    class Odd(State):
        history: torch.Tensor  # its first dimension is not the rows

    with pytest.raises(TypeError, match="Odd.history"):
        row_fields(Odd(2, torch.device("cpu"), torch.zeros(5, 3)))
