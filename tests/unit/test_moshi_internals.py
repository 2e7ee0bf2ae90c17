"""What the codec takes from moshi beyond its public API (codec/moshi_internals.py) still holds for
the installed moshi, and the public switches the codec relies on do what it expects.

If a moshi upgrade renames a private name, these fail here, loudly, rather than as noise elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from csm_service.codec.mimi import MimiCodec, disable_moshi_compile
from csm_service.codec.moshi_internals import mark_codebook_initialized, moshi_mimi_config


def test_moshi_mimi_config_is_what_get_mimi_builds_by_default():
    from moshi.models import loaders

    cfg = moshi_mimi_config()
    assert cfg["sample_rate"] == 24_000 and cfg["frame_rate"] == 12.5
    assert {"seanet", "quantizer", "transformer"} <= cfg.keys()
    cfg["seanet"]["dimension"] = -1  # a copy: moshi's own default is untouched
    assert moshi_mimi_config()["seanet"]["dimension"] != -1
    default = loaders.get_mimi(None, device="cpu", num_codebooks=32).state_dict()
    ours = loaders.get_mimi(None, moshi_mimi_config(), device="cpu", num_codebooks=32).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in default.items()}


def test_mark_codebook_initialized_sets_the_flag_and_drops_the_cached_codebook():
    from moshi.quantization.core_vq import EuclideanCodebook

    codebook = EuclideanCodebook(dim=4, codebook_size=8)
    assert not codebook.initialized and "_initialized" in codebook.state_dict()
    stale = codebook.embedding.clone()  # caches the all-zero codebook
    codebook.embedding_sum.normal_(0.0, 10.0)
    mark_codebook_initialized(codebook)
    assert codebook.initialized and codebook.state_dict()["_initialized"].item() == 1.0
    want = codebook.embedding_sum / codebook.cluster_usage.clamp(min=codebook.epsilon)[:, None]
    assert torch.equal(codebook.embedding, want) and not torch.equal(codebook.embedding, stale)


def test_disable_moshi_compile_stops_lazy_compile(monkeypatch):
    from moshi.utils import compile as moshi_compile

    monkeypatch.delenv("NO_TORCH_COMPILE", raising=False)  # read when a function is wrapped
    wrapped = moshi_compile.torch_compile_lazy(lambda x: x + 1)

    def no_compiler(*args, **kwargs):
        raise AssertionError("torch.compile was called")

    monkeypatch.setattr(torch, "compile", no_compiler)
    disable_moshi_compile()
    disable_moshi_compile()  # idempotent
    assert wrapped(torch.ones(2)).tolist() == [2.0, 2.0]
    with moshi_compile.no_compile():  # moshi's own nested use leaves it off
        pass
    assert wrapped(torch.ones(1)).tolist() == [2.0]


@pytest.mark.parametrize("rows", [(1, 3), (3, 2)])
def test_streaming_restarts_at_another_row_count(rows):
    """start_streaming leaves moshi's previous streaming state through its public exit stack."""
    codec = MimiCodec(None, torch.device("cpu"), seed=3, tiny=True)
    for n in rows:
        codec.start_streaming(n)
        codec.reset_rows(torch.ones(n, dtype=torch.bool))
        pcm = codec.decode_step(torch.zeros(n, 32, dtype=torch.int64), torch.ones(n, dtype=torch.bool))
        assert pcm.shape == (n, 1920) and codec.mimi.is_streaming
    assert not codec._encoder_model.is_streaming
