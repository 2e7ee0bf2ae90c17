import torch

from csm_service.engine.sampling import sample_topk, uniform_noise


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
