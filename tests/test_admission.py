"""Admission control on its own: budgets, eviction, per-address caps, wrong-key buckets,
pressure deadlines, bounded bookkeeping and the summary log, under MockClock."""

from __future__ import annotations

import logging
import math

import pytest
import trio
import trio.testing

from papaya_trio import admission as admission_module
from papaya_trio.admission import Admission, AdmissionSettings, Ticket, address_group


def addr(host: str, port: int = 40000) -> tuple[str, int]:
    return (host, port)


def admit(admission: Admission, host: str) -> Ticket:
    ticket = admission.admit(addr(host))
    assert ticket is not None, f"{host} was refused"
    return ticket


@pytest.mark.parametrize(
    ("address", "group"),
    [
        (("192.0.2.7", 1), "192.0.2.7"),
        (("2001:db8:1:2:aaaa::1", 1, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::9", 1, 0, 0), "2001:db8:1:2::/64"),  # same /64, same group
        (("2001:db8:1:3::1", 1, 0, 0), "2001:db8:1:3::/64"),
        (("::ffff:192.0.2.7", 1, 0, 0), "192.0.2.7"),  # IPv4-mapped counts as IPv4
        (("fe80::1%lo", 1, 0, 1), "fe80::/64"),
        (("not an address", 1), None),
        ("/run/papaya.sock", None),
        (None, None),
    ],
)
def test_address_groups(address: object, group: str | None) -> None:
    assert address_group(address) == group


async def test_members_and_handshakes_have_separate_budgets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(AdmissionSettings(max_connections=2, max_handshakes=3))
    members = [admit(admission, f"10.0.0.{i}") for i in (1, 2)]
    assert all(ticket.promote() for ticket in members)
    handshakes = [admit(admission, f"10.0.1.{i}") for i in (1, 2, 3)]
    stats = admission.statistics()
    assert (stats.members, stats.handshakes) == (2, 3)
    assert not handshakes[0].promote()  # the members' budget is full: server_full
    members[0].release()
    assert handshakes[0].promote()
    assert admission.statistics().members == 2


async def test_a_newcomer_evicts_from_the_busiest_address_never_a_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(
        AdmissionSettings(max_connections=10, max_handshakes=4, max_handshakes_per_ip=0)
    )
    member = admit(admission, "10.0.0.1")
    assert member.promote()
    flood = [admit(admission, "10.0.0.66") for _ in range(3)]
    other = admit(admission, "10.0.0.7")
    newcomer = admit(admission, "10.0.0.8")  # the budget is full: evicts 10.0.0.66's oldest
    assert flood[0].evicted and flood[0].scope.cancel_called
    assert not any(t.evicted for t in (*flood[1:], other, newcomer, member))
    assert not flood[0].promote()  # an evicted handshake can never become a member
    # The flooder now has as many as it may: its next connection is refused, not admitted.
    assert admission.admit(addr("10.0.0.66")) is None
    assert admission.admit(addr("10.0.0.9")) is not None  # evicts the flooder again
    assert flood[1].evicted
    assert admission.statistics().members == 1


async def test_among_equally_busy_addresses_the_oldest_handshake_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(AdmissionSettings(max_handshakes=3, pressure_auth_timeout=2.0))
    first, second, third = (admit(admission, f"10.0.0.{i}") for i in (1, 2, 3))
    admit(admission, "10.0.0.4")
    assert first.evicted and not second.evicted and not third.evicted
    admit(admission, "10.0.0.5")  # another address that holds none
    assert second.evicted and not third.evicted


async def test_an_address_that_was_just_evicted_cannot_evict(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(AdmissionSettings(max_handshakes=2, pressure_auth_timeout=2.0))
    first, second = admit(admission, "10.0.0.1"), admit(admission, "10.0.0.2")
    admit(admission, "10.0.0.3")
    assert first.evicted
    # 10.0.0.1 holds none now, but it is the flooder that keeps reconnecting: refused (cheap),
    # rather than evicting someone else (which would only make it reconnect again).
    assert admission.admit(addr("10.0.0.1")) is None
    await trio.sleep(2.0)
    admit(admission, "10.0.0.1")
    assert second.evicted


async def test_per_address_caps(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(AdmissionSettings(max_connections_per_ip=3, max_handshakes_per_ip=2))
    a, b = admit(admission, "10.0.0.1"), admit(admission, "10.0.0.1")
    assert admission.admit(addr("10.0.0.1")) is None  # two handshakes already
    assert admission.admit(addr("10.0.0.2")) is not None  # another address is not affected
    assert a.promote() and b.promote()
    c = admit(admission, "10.0.0.1")
    assert admission.admit(addr("10.0.0.1")) is None  # three connections already
    c.release()
    assert admission.admit(addr("10.0.0.1")) is not None


async def test_ipv6_caps_hold_for_the_whole_64(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(AdmissionSettings(max_handshakes_per_ip=1))
    assert admission.admit(("2001:db8::1", 1, 0, 0)) is not None
    assert admission.admit(("2001:db8::2", 1, 0, 0)) is None
    assert admission.admit(("2001:db8:0:1::2", 1, 0, 0)) is not None


async def test_unknown_addresses_are_groups_of_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(AdmissionSettings(max_handshakes=3, max_handshakes_per_ip=1))
    tickets = [admission.admit(None) for _ in range(3)]
    assert all(ticket is not None for ticket in tickets)
    assert admission.admit(None) is not None  # evicts the oldest, never refused per address


async def test_wrong_keys_past_the_burst_close_an_address_until_it_refills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(AdmissionSettings(wrong_key_rate=0.5, wrong_key_burst=3))
    for _ in range(3):
        with admit(admission, "10.0.0.1") as ticket:
            ticket.wrong_key()
    assert admission.admit(addr("10.0.0.1")) is None
    assert admission.admit(addr("10.0.0.2")) is not None  # only the guessing address
    await trio.sleep(2.0)  # one token back
    with admit(admission, "10.0.0.1") as ticket:
        ticket.wrong_key()
    assert admission.admit(addr("10.0.0.1")) is None
    await trio.sleep(10.0)
    admit(admission, "10.0.0.1")
    # Full again: the bucket is forgotten, nothing is left of the address but its connection.
    assert admission.statistics().wrong_key_groups == 0


async def test_bookkeeping_goes_away_when_connections_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(AdmissionSettings(max_handshakes=8))
    tickets = [admit(admission, f"10.0.0.{i}") for i in range(20)]  # 12 of them evicted
    tickets[-1].promote()
    for ticket in tickets:
        ticket.release()
        ticket.release()  # idempotent
    assert admission.statistics() == admission_module.AdmissionStatistics(0, 0, 0, 0, False)


async def test_wrong_key_buckets_are_capped(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admission_module, "MAX_REMEMBERED_GROUPS", 5)
    admission = Admission(AdmissionSettings(wrong_key_burst=1))
    for i in range(20):
        with admit(admission, f"10.0.0.{i}") as ticket:
            ticket.wrong_key()
    assert admission.statistics().wrong_key_groups == 5
    assert admission.admit(addr("10.0.0.19")) is None  # the newest are remembered
    assert admission.admit(addr("10.0.0.0")) is not None  # the oldest were forgotten


async def test_under_pressure_every_handshake_gets_the_short_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = AdmissionSettings(max_handshakes=4, pressure_auth_timeout=2.0)
    admission = Admission(settings)
    early = admit(admission, "10.0.0.1")
    assert early.scope.deadline == math.inf
    await trio.sleep(1.0)
    second = admit(admission, "10.0.0.2")  # 2 of 4: pressure
    assert admission.statistics().under_pressure
    for ticket in (early, second):  # spread over the second half of the 2 s
        assert 1.0 <= ticket.scope.deadline - ticket.connected_at <= 2.0
    assert early.scope.deadline - early.connected_at != second.scope.deadline - second.connected_at
    assert second.promote()  # members are not held to it
    assert second.scope.deadline == math.inf
    assert not admission.statistics().under_pressure


async def test_an_evicted_handshake_is_cancelled_through_its_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(AdmissionSettings(max_handshakes=1))
    victim = admit(admission, "10.0.0.1")
    with victim:
        async with trio.open_nursery() as nursery:

            async def handshake() -> None:
                with victim.scope:
                    await trio.sleep_forever()

            nursery.start_soon(handshake)
            await trio.testing.wait_all_tasks_blocked()
            admit(admission, "10.0.0.2")
    assert victim.scope.cancelled_caught


async def test_one_summary_line_per_interval(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="papaya_trio.admission")
    admission = Admission(AdmissionSettings(log_interval=10.0, wrong_key_burst=1000))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(admission.serve_reports)
        for i in range(500):
            with admit(admission, f"10.0.0.{i % 50}") as ticket:
                ticket.wrong_key()
            await trio.sleep(0.01)  # 5 s of attempts
        await trio.sleep(20.0)
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "failed or refused" in r.getMessage()]
    assert lines == [
        "failed or refused connections in the last 10s: 500 wrong key; "
        "from 50 addresses, most from 10.0.0.0 (10)"
    ]
