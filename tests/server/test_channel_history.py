"""The one-node channel history (server/channel_history.py) and membership bookkeeping
(LocalDirectory), without a server: every bound of a ring, and first/last member edges."""

from __future__ import annotations

import pytest

from server.channel_history import ChannelRings
from server.metrics import REGISTRY
from server.seams import LocalDirectory, MemberChange
from server.sessions import SessionRegistry


def hits(limit: str) -> float:
    return REGISTRY.get_sample_value("switchboard_limit_hits_total", {"limit": limit}) or 0


def test_a_ring_keeps_the_rules_number_of_frames_newest_last() -> None:
    rings = ChannelRings(max_bytes=1024, max_channels=10, ttl=60)
    for i in range(5):
        rings.record("room", b"f%d" % i, keep=3)
    assert rings.recent("room", 10) == [b"f2", b"f3", b"f4"]
    assert rings.recent("room", 2) == [b"f3", b"f4"]
    assert rings.recent("other", 5) == []


def test_a_ring_is_bounded_in_bytes_and_a_too_large_frame_is_not_kept() -> None:
    rings = ChannelRings(max_bytes=100, max_channels=10, ttl=60)
    before = hits("channel_history_bytes")
    for i in range(4):
        rings.record("room", bytes([65 + i]) * 40, keep=100)
    assert [f[:1] for f in rings.recent("room", 100)] == [b"C", b"D"]  # 80 bytes kept
    assert hits("channel_history_bytes") == before + 2
    rings.record("room", b"x" * 101, keep=100)
    assert len(rings.recent("room", 100)) == 2 and hits("channel_history_bytes") == before + 3


def test_beyond_the_channel_cap_the_least_recently_written_ring_goes() -> None:
    rings = ChannelRings(max_bytes=100, max_channels=2, ttl=60)
    before = hits("channel_history_channels")
    rings.record("a", b"1", keep=5)
    rings.record("b", b"1", keep=5)
    rings.record("a", b"2", keep=5)  # a is now the most recent
    rings.record("c", b"1", keep=5)
    assert rings.recent("b", 5) == [] and rings.recent("a", 5) == [b"1", b"2"]
    assert hits("channel_history_channels") == before + 1


def test_a_ring_untouched_for_its_ttl_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.channel_history as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    rings = ChannelRings(max_bytes=100, max_channels=2, ttl=30)
    rings.record("a", b"1", keep=5)
    now[0] += 29
    assert rings.recent("a", 5) == [b"1"]
    now[0] += 2
    assert rings.recent("a", 5) == [] and "a" not in rings.rings


async def test_membership_changes_report_first_and_last_members() -> None:
    directory = LocalDirectory(SessionRegistry(history_limit=10, session_ttl=60), "n")
    record = directory.record_membership
    assert await record([MemberChange(True, "c", "x", "u"), MemberChange(True, "c", "y", None),
                         MemberChange(True, "c", "x", "u")]) == [
        (True, True), (True, False), (False, False)]
    assert (await directory.presence("c", 1)).total == 2
    assert await record([MemberChange(False, "c", "x", "u"), MemberChange(False, "c", "x", "u"),
                         MemberChange(False, "c", "y", None)]) == [
        (True, False), (False, False), (True, True)]
    assert directory.members == {}
