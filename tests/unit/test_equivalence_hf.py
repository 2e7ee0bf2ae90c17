"""Our CSM vs Hugging Face transformers' CsmForConditionalGeneration on identical random weights.

The prompt carries a context segment of 300 audio frames, so RoPE is exercised over ~330
positions: wrong RoPE scaling or layout agrees on short prompts but not here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_service.config import TINY
from csm_service.core.request import Segment
from csm_service.engine.compiled import find_cxx
from csm_service.engine.prompt import build_prompt
from csm_service.engine.runner import ModelRunner
from csm_service.model.loader import ModelFiles, load_checkpoint
from csm_service.model.tokenizer import ByteTokenizer
from tests.hf_reference import build_hf_model, hf_greedy_frames, write_checkpoints

NUM_FRAMES = 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    hf_model = build_hf_model(TINY, seed=1)
    root = tmp_path_factory.mktemp("ckpt")
    hf_dir, sesame_ckpt = write_checkpoints(hf_model, TINY, root)
    rng = np.random.default_rng(0)
    context = (Segment(1, "What a lovely day it is today.", rng.integers(0, 2048, (32, 300))),)
    tokens, mask = build_prompt(ByteTokenizer(), context, "Hello from the other side.", 0, TINY.num_codebooks)
    assert tokens.shape[0] > 300
    codes, c0_logits, depth_logits = hf_greedy_frames(
        hf_model, torch.from_numpy(tokens), torch.from_numpy(mask), NUM_FRAMES
    )
    return {
        "hf_dir": hf_dir,
        "sesame_ckpt": sesame_ckpt,
        "tokens": tokens,
        "mask": mask,
        "codes": codes,
        "c0_logits": c0_logits,
        "depth_logits": depth_logits,
    }


def _load(reference, naming: str):
    if naming == "transformers":
        d = reference["hf_dir"]
        return load_checkpoint(ModelFiles((d / "model.safetensors",), d / "config.json", None))
    return load_checkpoint(ModelFiles((reference["sesame_ckpt"],), None, None), cfg=TINY)


@pytest.mark.parametrize("naming", ["transformers", "sesame"])
def test_logits_match_transformers(reference, naming):
    model = _load(reference, naming)
    runner = ModelRunner(model, max_batch=1, device=torch.device("cpu"), dtype=torch.float32)
    runner.prefill(0, reference["tokens"], reference["mask"], seed=0, temperature=1.0, top_k=1)
    with torch.inference_mode():
        hidden = runner.hidden[:1]
        c0 = model.codebook0_logits(hidden)[0]
        torch.testing.assert_close(c0, reference["c0_logits"][0], rtol=1e-4, atol=1e-4)
        # Depth decoder, teacher-forced on the reference's codes of frame 0.
        codes = reference["codes"][0]
        x = torch.stack([hidden, model.embed_code(0, codes[:1])], dim=1)
        h = model.decoder(model.projection(x), torch.arange(2).expand(1, 2), slice(0, 1), 2)[:, -1]
        for cb in range(1, TINY.num_codebooks):
            logits = model.codebook_logits(cb, h)[0]
            torch.testing.assert_close(logits, reference["depth_logits"][0, cb - 1], rtol=1e-4, atol=1e-4)
            if cb == TINY.num_codebooks - 1:
                break
            x = model.projection(model.embed_code(cb, codes[cb : cb + 1])).unsqueeze(1)
            h = model.decoder(x, torch.full((1, 1), cb + 1), slice(0, 1), cb + 2)[:, -1]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("naming", ["transformers", "sesame"])
def test_greedy_codes_match_transformers(reference, naming, compiled, inductor_cache):
    if compiled and find_cxx() is None:
        pytest.skip("no C++ compiler: Inductor cannot compile the CPU step")
    model = _load(reference, naming)
    runner = ModelRunner(  # three slots as in test_compiled_step: the same compiled graph, a cache hit
        model,
        max_batch=3,
        device=torch.device("cpu"),
        dtype=torch.float32,
        compile_cpu=compiled,
        compile_cache_dir=inductor_cache,
    )
    assert runner.compiled == compiled
    tokens = reference["tokens"]
    runner.prefill(0, tokens, reference["mask"], seed=123, temperature=0.9, top_k=1)
    ours = [runner.step(1, kv_len=tokens.shape[0] + i + 1)[0].clone() for i in range(NUM_FRAMES)]
    assert torch.equal(torch.stack(ours), reference["codes"])


def test_both_namings_load_identical_weights(reference):
    a = _load(reference, "transformers").state_dict()
    b = _load(reference, "sesame").state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
