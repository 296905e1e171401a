"""The figures published by the paper (1 vCPU, FreeBSD 13, sampled with top every 500 ms).

The C figures at 32 and 64 connections are whole-system figures because top truncated its
process list; they are kept as published.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedPoint:
    """One published measurement: mean CPU % of one vCPU and its Cv."""

    cpu_percent: float
    cv: float


#: Published results by server, then by number of connections.
PUBLISHED: dict[str, dict[int, PublishedPoint]] = {
    "C fork": {
        1: PublishedPoint(0.34, 0.159),
        2: PublishedPoint(0.45, 0.221),
        4: PublishedPoint(0.79, 0.228),
        8: PublishedPoint(1.37, 0.137),
        16: PublishedPoint(2.17, 0.147),
        32: PublishedPoint(8.02, 0.348),
        64: PublishedPoint(14.70, 0.272),
    },
    "Go goroutines": {
        1: PublishedPoint(1.94, 0.169),
        2: PublishedPoint(2.61, 0.205),
        4: PublishedPoint(4.35, 0.172),
        8: PublishedPoint(6.15, 0.276),
        16: PublishedPoint(11.71, 0.229),
        32: PublishedPoint(22.71, 0.322),
        64: PublishedPoint(36.08, 0.243),
    },
}
