"""A token bucket on trio's clock, shared by admission control and the per-member rate limits.

A bucket holds at most `capacity` tokens and gains `rate` tokens per second. `take` waits
until there are enough tokens and spends them (the members' "fakelag"); `charge` spends after
the fact and may leave a debt (the tokens go below zero), which the refill pays back first,
and `tokens` tells whether there is one to spend (admission control's wrong-key limit).

Time comes only from `trio.current_time()`, so `MockClock` drives every bucket in the tests
and the simulation. A bucket stores two numbers and computes its level when asked: it costs
nothing while nobody uses it, and nothing runs in the background.
"""

from __future__ import annotations

import math

import trio


class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` per second; full when created."""

    def __init__(self, rate: float, capacity: float) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._stamp = trio.current_time()

    def __repr__(self) -> str:
        return f"<TokenBucket {self.tokens:.1f}/{self.capacity:g} +{self.rate:g}/s>"

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now (negative while a debt is being paid back)."""
        now = trio.current_time()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._tokens

    @property
    def full(self) -> bool:
        """Whether the bucket is full again: it then remembers nothing worth keeping."""
        return self.tokens >= self.capacity

    def delay(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0 if they are now); a cost above the
        capacity counts as the capacity, so it never waits forever."""
        missing = min(cost, self.capacity) - self.tokens
        return max(0.0, missing / self.rate)

    def charge(self, cost: float = 1.0) -> None:
        """Spend `cost` tokens whether or not they are there (a debt paid back by refill)."""
        self._tokens = self.tokens - cost

    async def take(self, cost: float = 1.0) -> float:
        """Wait until `cost` tokens are there, spend them, and return the seconds waited.

        Always a checkpoint, like any trio operation. Cancelling the wait spends nothing.
        """
        wait = self.delay(cost)
        if wait > 0:
            # A float rounding error must not leave us a hair short: sleep to the next tick.
            await trio.sleep(math.nextafter(wait, math.inf))
        else:
            await trio.lowlevel.checkpoint()
        self._tokens = self.tokens - cost
        return wait
