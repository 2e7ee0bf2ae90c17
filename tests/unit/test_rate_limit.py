"""The per-client token bucket: burst, refill, Retry-After, isolation between clients, bounded memory."""

from __future__ import annotations

import pytest

from csm_service.api.errors import ApiError, retry_after_header
from csm_service.api.speak import parse_speak
from csm_service.core.errors import RATE_LIMITED
from csm_service.limits import RateLimiter, client_id
from tests.fake_clock import FakeClock


def test_burst_then_refill_at_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(0.5)  # one token takes 1 / 2 s
    clock.now += 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)  # half a token so far; the refused try costs nothing
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    clock.now += 100  # refill stops at the burst
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0


def test_clients_do_not_share_buckets():
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=FakeClock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_disabled_limiter_always_grants_and_keeps_nothing():
    limiter = RateLimiter(rate_per_s=0.0, burst=1)
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_memory_is_bounded_least_recently_used_dropped():
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_clients=3, clock=FakeClock())
    for name in "abcd":
        limiter.acquire(name)
    assert len(limiter) == 3
    assert limiter.acquire("a") == 0.0  # "a" was dropped, so it starts full again
    assert limiter.acquire("d") > 0  # "d" is still remembered


def test_client_ids_hash_keys_and_fall_back_to_peer():
    a = client_id("secret-key", "10.0.0.1")
    assert a.startswith("key:") and "secret" not in a
    assert a == client_id("secret-key", "10.0.0.2")  # one key, one bucket, wherever it calls from
    assert client_id(None, "10.0.0.1") == "peer:10.0.0.1"


def test_retry_after_rounds_up_to_whole_seconds():
    assert retry_after_header(0.01) == 1
    assert retry_after_header(1.0) == 1
    assert retry_after_header(1.2) == 2


def test_ws_error_carries_retry_after_ms():
    msg = ApiError(429, RATE_LIMITED, "over 1 requests/s", retry_after_s=0.25).ws_message("r1")
    assert msg == {
        "type": "error",
        "error": RATE_LIMITED,
        "detail": "over 1 requests/s",
        "retry_after_ms": 250,
        "request_id": "r1",
    }


def test_server_cap_on_audio_length():
    assert parse_speak({"text": "hi"}, 100, max_audio_ms=480).max_audio_length_ms == 480  # default capped
    with pytest.raises(ApiError) as err:
        parse_speak({"text": "hi", "max_audio_length_ms": 481}, 100, max_audio_ms=480)
    assert err.value.status == 422 and err.value.field == "max_audio_length_ms"
