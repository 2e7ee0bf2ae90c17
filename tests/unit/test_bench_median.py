"""bench frame's interleaved rounds: each run reports its median round, whole (not a mix of rounds)."""

from __future__ import annotations

from csm_service.tools.bench import lower_median, median_run, per_round_ratios


def _run(ms: float, prefill_s: float) -> dict[str, float]:
    return {"ms_per_frame": ms, "ms_per_step": ms - 1, "prefill_s": prefill_s}


def test_median_round_is_one_whole_round_with_every_round_listed():
    rounds = [_run(300.0, 0.3), _run(250.0, 0.2), _run(410.0, 0.9)]
    median = median_run(rounds)
    assert median["ms_per_frame"] == 300.0 and median["prefill_s"] == 0.3 and median["ms_per_step"] == 299.0
    assert median["rounds_ms_per_frame"] == [300.0, 250.0, 410.0]  # in the order they ran


def test_even_rounds_take_the_lower_middle_and_one_round_is_itself():
    assert median_run([_run(5.0, 0), _run(2.0, 0), _run(9.0, 0), _run(4.0, 0)])["ms_per_frame"] == 4.0
    assert median_run([_run(7.0, 0.1)])["ms_per_frame"] == 7.0


def test_ratio_pairs_each_round_with_transformers_same_round():
    """The machine drifts between rounds; a round's pair drifts together. Medians taken apart pair
    ours' third round with transformers' first (0.66x); round by round it is 0.6x in two of three."""
    ours = [_run(300.0, 0), _run(600.0, 0), _run(330.0, 0)]
    transformers = [_run(500.0, 0), _run(1000.0, 0), _run(500.0, 0)]
    ratios = per_round_ratios(ours, transformers)
    assert ratios == [0.6, 0.6, 0.66]
    assert lower_median(ratios) == 0.6
    assert median_run(ours)["ms_per_frame"] / median_run(transformers)["ms_per_frame"] == 0.66
