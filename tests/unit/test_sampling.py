import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_service.engine.sampling import hash_to_uniform, sample_topk, uniform_noise


def test_noise_depends_only_on_seed_frame_codebook():
    seeds = torch.tensor([1, 2, 1])
    frames = torch.tensor([0, 0, 0])
    u = uniform_noise(seeds, frames, 3, 2051)
    assert u.shape == (3, 2051) and (u > 0).all() and (u < 1).all()
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])
    assert not torch.equal(u[0], uniform_noise(seeds, frames + 1, 3, 2051)[0])
    assert not torch.equal(u[0], uniform_noise(seeds, frames, 4, 2051)[0])
    big = uniform_noise(torch.tensor([2**62 + 5, 5]), torch.tensor([7, 7]), 0, 64)
    assert not torch.equal(big[0], big[1])  # the high seed bits matter


def test_noise_is_roughly_uniform():
    u = uniform_noise(torch.arange(64), torch.zeros(64, dtype=torch.int64), 0, 2051)
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005


def test_topk_restricts_and_greedy_is_argmax():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]]).repeat(400, 1)
    seeds = torch.arange(400)
    noise = uniform_noise(seeds, torch.zeros(400, dtype=torch.int64), 0, 5)
    draws = sample_topk(logits, torch.ones(400), torch.full((400,), 2), noise)
    assert set(draws.tolist()) == {1, 2}
    greedy = sample_topk(logits, torch.ones(400), torch.ones(400, dtype=torch.int64), noise)
    assert (greedy == 1).all()
    # frequencies follow the softmax over the top 2: p(1) = e^5 / (e^5 + e^4) ~ 0.73
    assert 0.65 < (draws == 1).float().mean().item() < 0.81


def test_uniforms_never_reach_0_or_1():
    """The extreme hash values map strictly inside (0, 1) in float32 (a float64 -> float32 cast of
    (h + 0.5) / 2^32 rounds the top 128 values to exactly 1.0)."""
    h = torch.tensor([0, 1, 511, 512, 2**32 - 129, 2**32 - 128, 2**32 - 1], dtype=torch.int64)
    u = hash_to_uniform(h)
    assert u.dtype == torch.float32
    assert (u > 0).all() and (u < 1).all(), u.tolist()
    assert u[0] == 2.0**-24 and u[-1] == 1 - 2.0**-24


def test_draw_stays_in_topk_when_noise_is_exactly_0_or_1():
    """u = 1.0 makes Exp(1) noise -0.0 and u = 0.0 makes it inf: neither may pull a token from outside
    the top k (0 / -0.0 is NaN, which argmax picks) nor break greedy decoding."""
    gen = torch.Generator().manual_seed(0)
    vocab, k = 2051, 50
    logits = torch.randn(64, vocab, generator=gen) * 3
    for fill in (0.0, 1.0):
        for pattern in ("all", "outside", "inside", "random"):
            noise = torch.rand(64, vocab, generator=gen).clamp(1e-6, 1 - 1e-6)
            top = logits.topk(k, dim=-1).indices
            inside = torch.zeros_like(noise, dtype=torch.bool).scatter_(1, top, True)
            where = {
                "all": torch.ones_like(inside),
                "outside": ~inside,
                "inside": inside,
                "random": torch.rand(64, vocab, generator=gen) < 0.3,
            }[pattern]
            noise = noise.masked_fill(where, fill)
            for top_k in (1, 2, k):
                draws = sample_topk(logits, torch.full((64,), 0.9), torch.full((64,), top_k), noise)
                allowed = logits.topk(top_k, dim=-1).indices
                assert (allowed == draws.unsqueeze(1)).any(dim=1).all(), (fill, pattern, top_k)
                if top_k == 1:
                    assert torch.equal(draws, logits.argmax(dim=-1)), (fill, pattern)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    vocab=st.integers(2, 40),
    temperature=st.floats(0.05, 5.0),
)
def test_draw_is_in_topk_for_any_noise_in_closed_unit_interval(data, vocab, temperature):
    logits = torch.tensor(data.draw(st.lists(st.floats(-30, 30), min_size=vocab, max_size=vocab)))
    noise = torch.tensor(
        data.draw(
            st.lists(
                st.one_of(st.sampled_from([0.0, 1.0, 2.0**-24, 1 - 2.0**-24]), st.floats(0.0, 1.0)),
                min_size=vocab,
                max_size=vocab,
            )
        ),
        dtype=torch.float32,
    )
    top_k = data.draw(st.integers(1, vocab))
    draw = sample_topk(
        logits.unsqueeze(0), torch.tensor([temperature]), torch.tensor([top_k]), noise.unsqueeze(0)
    ).item()
    scaled = logits / torch.tensor(temperature, dtype=torch.float32)
    kth = scaled.sort(descending=True).values[top_k - 1]
    assert scaled[draw] >= kth
    if top_k == 1:
        assert draw == scaled.argmax().item()
