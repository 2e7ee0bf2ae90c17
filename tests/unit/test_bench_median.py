"""bench frame's interleaved rounds: each run reports its median round, whole (not a mix of rounds)."""

from __future__ import annotations

from csm_service.tools.bench import median_run


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
