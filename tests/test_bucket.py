"""The token bucket on trio's clock, driven by MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from papaya_trio.bucket import TokenBucket


async def test_a_full_bucket_gives_its_burst_then_refills_at_its_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(rate=2.0, capacity=5)
    start = trio.current_time()
    for _ in range(5):
        assert await bucket.take() == 0.0
    assert bucket.tokens == 0
    assert bucket.delay() == pytest.approx(0.5)
    assert await bucket.take() == pytest.approx(0.5)
    assert trio.current_time() - start == pytest.approx(0.5)
    await trio.sleep(100.0)
    assert bucket.tokens == 5  # never more than the capacity
    assert bucket.full


async def test_take_waits_for_tokens_on_the_trio_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(rate=10.0, capacity=3)
    start = trio.current_time()
    waits = [await bucket.take() for _ in range(13)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert trio.current_time() - start == pytest.approx(1.0)  # 10 more tokens at 10 per second


async def test_a_cost_above_the_capacity_waits_for_a_full_bucket_and_leaves_a_debt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(rate=1.0, capacity=4)
    await bucket.take(3)
    start = trio.current_time()
    await bucket.take(10)
    assert trio.current_time() - start == pytest.approx(3.0)  # until full again, not forever
    assert bucket.tokens == pytest.approx(-6.0)
    assert bucket.delay() == pytest.approx(7.0)


async def test_charge_goes_into_debt_and_refill_pays_it_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(rate=1.0, capacity=2)
    for _ in range(4):
        bucket.charge()
    assert bucket.tokens == pytest.approx(-2.0)
    await trio.sleep(3.0)
    assert bucket.tokens == pytest.approx(1.0)


async def test_cancelled_take_spends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(rate=1.0, capacity=1)
    bucket.charge()
    with trio.move_on_after(0.5):
        await bucket.take()
    assert bucket.tokens == pytest.approx(0.5)


async def test_rate_and_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate=0.0, capacity=1)
