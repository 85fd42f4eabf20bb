"""SessionRegistry unit tests: seq, history, replay, channels, expiry, caps. No sockets."""

from __future__ import annotations

import gc
import time
import weakref

import orjson
import pytest

from server import protocol
from server.sessions import (
    Session,
    SessionRegistry,
    TooManyChannels,
    entry_as_dict,
    valid_client_id,
)


class FakeOutbox:
    """An Outbox that records frames; ``accept=False`` behaves like an overflowing socket."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def push(self, data: bytes) -> bool:
        if not self.accept:
            return False
        self.frames.append(data)
        return True

    def push_parts(self, head: bytes, tail: bytes) -> bool:
        return self.push(head + tail)

    def close_soon(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def registry(history_limit: int = 100, session_ttl: float = 60.0, **kw: object
             ) -> SessionRegistry:
    return SessionRegistry(history_limit=history_limit, session_ttl=session_ttl, **kw)  # type: ignore[arg-type]


def frame(content: str) -> bytes:
    return protocol.encode(protocol.server_frame("message", {"content": content}))


def seqs(frames: list[bytes]) -> list[int]:
    return [orjson.loads(f)["seq"] for f in frames]


def contents(frames: list[bytes]) -> list[str]:
    return [orjson.loads(f)["data"]["content"] for f in frames]


def test_create_uses_a_valid_free_client_id_else_generates_one() -> None:
    reg = registry()
    alice = reg.create("alice", "web")
    assert alice.client_id == "alice" and alice.client_type == "web"
    taken = reg.create("alice", "web")
    assert taken.client_id != "alice"
    invalid = reg.create("bad id/../", "web")
    assert invalid.client_id != "bad id/../" and valid_client_id(invalid.client_id)
    assert reg.create(None, "x").client_id not in ("alice", taken.client_id)
    assert len(reg) == 4


def test_tokens_are_unguessable_and_compared_exactly() -> None:
    reg = registry()
    a, b = reg.create("a", "t"), reg.create("b", "t")
    assert a.token != b.token and len(a.token) >= 32
    assert a.token_matches(a.token)
    assert not a.token_matches(b.token)
    assert not a.token_matches("")
    assert not a.token_matches(a.token + "x")
    assert not a.token_matches("é")


def test_deliver_stamps_contiguous_seq_and_keeps_history() -> None:
    reg = registry()
    session = reg.create("a", "t")
    box = FakeOutbox()
    reg.attach(session, box)
    results = [reg.deliver(session, frame(str(i))) for i in range(5)]
    assert results == [(i, True) for i in range(1, 6)]
    assert seqs(box.frames) == [1, 2, 3, 4, 5]
    assert session.seq == 5 and len(session.history) == 5
    assert session.messages_out == 5


def test_deliver_to_an_offline_session_is_queued_in_history() -> None:
    reg = registry()
    session = reg.create("a", "t")
    assert reg.deliver(session, frame("x")) == (1, False)
    frames, complete = session.replay_after(0)
    assert complete and contents(frames) == ["x"]


def test_ephemeral_frames_get_no_seq_and_no_history() -> None:
    reg = registry()
    session = reg.create("a", "t")
    box = FakeOutbox()
    reg.attach(session, box)
    assert reg.deliver_ephemeral(session, frame("pong"))
    assert session.seq == 0 and not session.history
    assert "seq" not in orjson.loads(box.frames[0])


def test_replay_after_returns_exactly_the_missed_frames_in_order() -> None:
    reg = registry()
    session = reg.create("a", "t")
    for i in range(1, 8):
        reg.deliver(session, frame(str(i)))
    reg.record_inbound(session, b'{"type":"ping"}')  # client frames are never replayed
    frames, complete = session.replay_after(4)
    assert complete
    assert seqs(frames) == [5, 6, 7] and contents(frames) == ["5", "6", "7"]
    assert session.replay_after(7) == ([], True)


def test_replay_after_overflowed_history_is_not_recovered() -> None:
    reg = registry(history_limit=3)
    session = reg.create("a", "t")
    for i in range(1, 11):
        reg.deliver(session, frame(str(i)))
    frames, complete = session.replay_after(2)
    assert not complete
    assert seqs(frames) == [8, 9, 10]  # what is left, still in order
    frames, complete = session.replay_after(7)
    assert complete and seqs(frames) == [8, 9, 10]


def test_replay_with_a_last_seq_from_the_future_is_not_recovered() -> None:
    reg = registry()
    session = reg.create("a", "t")
    reg.deliver(session, frame("1"))
    assert session.replay_after(5) == ([], False)


def test_inbound_frames_sit_at_the_position_of_the_last_server_frame() -> None:
    reg = registry()
    session = reg.create("a", "t")
    reg.deliver(session, frame("1"))
    reg.record_inbound(session, b'{"type":"ping"}')
    reg.deliver(session, frame("2"))
    described = [entry_as_dict(e) for e in session.history]
    assert [(d["direction"], d["seq"], d["after_seq"]) for d in described] == [
        ("out", 1, None), ("in", None, 1), ("out", 2, None)]
    assert session.messages_in == 1
    assert session.describe()["message_count"] == 3


def test_fan_out_serialises_once_and_stamps_each_sessions_own_seq() -> None:
    reg = registry()
    a, b, c = reg.create("a", "t"), reg.create("b", "t"), reg.create("c", "t")
    box_a, box_b = FakeOutbox(), FakeOutbox(accept=False)
    reg.attach(a, box_a)
    reg.attach(b, box_b)
    reg.deliver(a, frame("private"))
    pushed, queued = reg.fan_out([a, b, c], frame("all"))
    assert (pushed, queued) == (1, 2)  # b overflowing and c offline keep it for resume
    assert seqs(box_a.frames) == [1, 2]
    assert b.seq == 1 and c.seq == 1
    assert contents(c.replay_after(0)[0]) == ["all"]


def test_a_broadcast_is_kept_once_and_each_client_gets_the_bytes_of_its_own_seq() -> None:
    reg = registry()
    a, b, c = reg.create("a", "t"), reg.create("b", "t"), reg.create("c", "t")
    box_a, box_c = FakeOutbox(), FakeOutbox()
    reg.attach(a, box_a)
    reg.attach(c, box_c)
    reg.deliver(c, frame("first"))
    encoded = frame("all")
    reg.fan_out([a, b, c], encoded, "m1")
    # every history holds the one encoded object; its byte count is each session's own
    assert a.history[-1][2] is b.history[-1][2] is c.history[-1][2] is encoded
    assert b.history_bytes == len(encoded) and c.history_bytes == len(frame("first")) + len(
        encoded)
    # live, replayed and listed frames are byte for byte what the seq makes of it
    assert box_c.frames[-1] == protocol.with_seq(encoded, 2)
    assert c.replay_after(0)[0] == box_c.frames
    assert b.replay_after(0)[0] == [protocol.with_seq(encoded, 1)]
    listed = [entry_as_dict(e)["frame"] for e in c.history]
    assert [orjson.dumps(f) for f in listed] == box_c.frames  # "seq" first, as sent


def test_history_entries_hold_only_atomic_values_so_the_collector_drops_them() -> None:
    reg = registry()
    a, b = reg.create("a", "t"), reg.create("b", "t")
    reg.deliver(a, frame("one"))
    reg.fan_out([a, b], frame("all"), "m1")
    reg.record_inbound(a, b'{"type":"ping"}')
    gc.collect()
    assert not any(gc.is_tracked(entry) for s in (a, b) for entry in s.history)


def test_attach_returns_the_replaced_connection_and_detach_ignores_stale_ones() -> None:
    reg = registry()
    session = reg.create("a", "t")
    first, second = FakeOutbox(), FakeOutbox()
    assert reg.attach(session, first) is None
    assert reg.attach(session, second) is first
    reg.detach(session, first)  # the replaced connection ending changes nothing
    assert session.connected and session.outbox is second
    reg.detach(session, second)
    assert not session.connected and session.disconnected_at is not None


def test_channels_join_leave_and_cleanup() -> None:
    reg = registry()
    a, b = reg.create("a", "t"), reg.create("b", "t")
    assert reg.join(a, "news") and not reg.join(a, "news")
    reg.join(b, "news")
    assert reg.channel_stats() == {"news": 2}
    assert {s.client_id for s in reg.select(channel="news")} == {"a", "b"}
    assert reg.leave(a, "news") and not reg.leave(a, "news")
    reg.leave(b, "news")
    assert reg.channels == {}  # empty channels are removed


def test_channel_allow_list() -> None:
    reg = registry(channel_allow_list=["news"], system_channels=["tool_activity"])
    assert reg.channel_allowed("news") and not reg.channel_allowed("other")
    assert reg.channel_allowed("tool_activity")  # the gateway's own, always open
    assert reg.available_channels() == ["news"]  # and never listed as available


def test_system_channels_are_not_listed_without_an_allow_list() -> None:
    reg = registry(system_channels=["tool_activity"])
    session = reg.create("a", "web")
    reg.join(session, "tool_activity")
    reg.join(session, "news")
    assert reg.channel_allowed("anything")
    assert reg.available_channels() == ["news"]


def test_a_detached_connection_never_ends_a_newer_session_with_its_id() -> None:
    reg = registry(session_ttl=0)
    old = reg.create("same", "web")
    reg.attach(old, object())  # type: ignore[arg-type]
    outbox = old.outbox
    reg.end("same")  # taken over: ended, and the id given to a new session
    new = reg.create("same", "web")
    assert new is not old
    reg.detach(old, outbox)  # type: ignore[arg-type]
    assert reg.get("same") is new


def test_select_filters() -> None:
    reg = registry()
    web, bot = reg.create("w", "web"), reg.create("b", "bot")
    reg.attach(web, FakeOutbox())
    assert [s.client_id for s in reg.select(client_type="bot")] == ["b"]
    assert [s.client_id for s in reg.select(connected=True)] == ["w"]
    assert [s.client_id for s in reg.select(connected=False)] == ["b"]
    assert bot.describe()["connected"] is False


def test_expiry_frees_the_session_and_its_channel_memberships() -> None:
    reg = registry(session_ttl=10)
    session = reg.create("a", "t")
    reg.join(session, "news")
    box = FakeOutbox()
    reg.attach(session, box)
    for i in range(3):
        reg.deliver(session, frame(str(i)))
    reg.detach(session, box)
    assert reg.expire(now=time.time()) == []  # still within SESSION_TTL
    history = weakref.ref(session.history)  # Session has __slots__; its deque is weakref-able
    del session
    assert reg.expire(now=time.time() + 11) == ["a"]
    assert reg.get("a") is None
    assert reg.channels == {}
    assert reg.counters.total_sessions_expired == 1
    del box
    gc.collect()
    assert history() is None  # nothing else holds the session's history: memory is freed


def go_offline_then_take_one_over(reg: SessionRegistry, offline_since: float) -> None:
    """Sessions b and c go offline here now; then a, offline since ``offline_since`` on its
    old node (before b and c), is taken over (adopted)."""
    for client_id in ("b", "c"):
        session = reg.create(client_id, "t")
        box = FakeOutbox()
        reg.attach(session, box)
        reg.detach(session, box)
    taken = Session("a", "t", 100)
    taken.disconnected_at = offline_since
    reg.adopt(taken)


def test_a_session_adopted_offline_expires_by_when_it_went_offline() -> None:
    """The sweep walks sessions in the order they went offline and stops at the first one
    within SESSION_TTL; one taken over from another node went offline earlier than those
    already here, and must neither wait for them nor be evicted after them."""
    reg = registry(session_ttl=10)
    now = time.time()
    go_offline_then_take_one_over(reg, offline_since=now - 8)
    assert reg.expire(now=now + 1) == []
    assert reg.expire(now=now + 3) == ["a"]  # b and c went offline at ~now: not yet
    assert sorted(reg.expire(now=now + 11)) == ["b", "c"]


def test_eviction_ends_the_session_offline_longest_even_if_adopted_last() -> None:
    reg = registry(session_ttl=100, max_sessions=3)
    go_offline_then_take_one_over(reg, offline_since=time.time() - 50)
    reg.create("d", "t")
    assert reg.evicted == ["a"]
    assert sorted(reg.sessions) == ["b", "c", "d"]


def test_connected_sessions_never_expire() -> None:
    reg = registry(session_ttl=0.0)
    session = reg.create("a", "t")
    reg.attach(session, FakeOutbox())
    assert reg.expire(now=time.time() + 3600) == []
    assert reg.get("a") is session


def test_zero_ttl_ends_the_session_on_disconnect() -> None:
    reg = registry(session_ttl=0.0)
    session = reg.create("a", "t")
    reg.join(session, "news")
    box = FakeOutbox()
    reg.attach(session, box)
    reg.detach(session, box)
    assert reg.get("a") is None and reg.channels == {}


def test_stats_count_sessions_and_messages() -> None:
    reg = registry()
    a = reg.create("a", "t")
    reg.create("b", "t")
    reg.attach(a, FakeOutbox())
    reg.deliver(a, frame("x"))
    reg.record_inbound(a, b"{}")
    stats = reg.stats()
    assert stats["connected_clients"] == 1
    assert stats["total_sessions"] == 2 and stats["offline_sessions"] == 1
    assert stats["total_messages_sent"] == 1 and stats["total_messages_received"] == 1


def test_describe_has_no_secret() -> None:
    session = Session("a", "t", 10)
    assert session.token not in str(session.describe())


def test_valid_client_id() -> None:
    assert valid_client_id("user-1_a.b:c@d")
    assert not valid_client_id("")
    assert not valid_client_id("a" * 129)
    assert not valid_client_id("has space")
    assert not valid_client_id("ü")


# --- caps (issue 11) ---------------------------------------------------------------------------

def test_history_is_capped_in_bytes_on_every_path_keeping_the_newest() -> None:
    reg = registry(history_limit=1000, history_bytes=1000)
    alice, bob = reg.create("alice", "t"), reg.create("bob", "t")
    for n in range(30):
        reg.deliver(alice, frame(f"{n:03d}" * 10))
        reg.fan_out([alice, bob], frame(f"{n:03d}" * 10))
        reg.record_inbound(alice, b'{"type":"chat_message","data":{"content":"' + b"x" * 50
                           + b'"}}')
    for session in (alice, bob):
        kept = sum(len(data) for _, _, data, _ in session.history)
        # Never over the cap, and after a trim no less than 7/8 of it (less one frame).
        assert 875 - 150 < kept <= 1000 and kept <= session.history_bytes <= 1000
    assert alice.history[-1][1] is False  # the newest (the inbound frame) is kept
    assert bob.history[-1][0] == bob.seq
    # The frame count cap still applies; the byte count is an upper bound that a trim redoes.
    small = registry(history_limit=3, history_bytes=10**6)
    carol = small.create("carol", "t")
    for n in range(10):
        small.fan_out([carol], frame(str(n)))
    assert len(carol.history) == 3
    assert carol.history_bytes >= sum(len(e[2]) for e in carol.history)
    carol.trim_history(10**6)  # nothing to drop: only the count is redone
    assert len(carol.history) == 3
    assert carol.history_bytes == sum(len(e[2]) for e in carol.history)
    # A frame larger than the cap is kept alone: a resume must find the last frame.
    huge = frame("y" * 5000)
    reg.deliver(bob, huge)
    assert len(bob.history) == 1 and bob.history_bytes > 1000


def test_max_sessions_evicts_the_longest_offline_first_never_a_connected_one() -> None:
    reg = registry(max_sessions=3)
    live = reg.create("live", "t")
    reg.attach(live, FakeOutbox())
    first, second = reg.create("first", "t"), reg.create("second", "t")
    for session in (second, first):  # second goes offline first
        reg.attach(session, box := FakeOutbox())
        reg.detach(session, box)
    reg.create("third", "t")
    assert sorted(reg.sessions) == ["first", "live", "third"]
    assert reg.evicted == ["second"] and reg.counters.total_sessions_evicted == 1
    # A session that came back is not offline any more: "first" is protected while connected.
    reg.attach(first, box := FakeOutbox())
    reg.create("fourth", "t")
    assert "first" in reg.sessions and "live" in reg.sessions
    # Only connected sessions left: nothing is evicted (MAX_SESSIONS >= MAX_CONNECTIONS keeps
    # this from happening in a running gateway).
    reg.attach(reg.sessions["fourth"], FakeOutbox())
    reg.create("fifth", "t")
    assert {"first", "live", "fourth", "fifth"} <= set(reg.sessions)


def test_adopt_indexes_channels_applies_the_caps_and_counts_history() -> None:
    reg = registry(max_sessions=1, history_bytes=500)
    old = reg.create("old", "t")
    reg.attach(old, box := FakeOutbox())
    reg.detach(old, box)
    moved = Session("moved", "t", 100)
    moved.channels = {"news"}
    for n in range(20):
        moved.remember((n + 1, True, frame(str(n) * 20), 0.0))
    reg.adopt(moved)
    assert sorted(reg.sessions) == ["moved"]  # "old" made room
    assert reg.channels["news"] == {moved}
    assert moved.history_bytes == sum(len(e[2]) for e in moved.history) <= 500


def test_channels_per_session_are_capped() -> None:
    reg = registry(max_channels=2)
    alice = reg.create("alice", "t")
    assert reg.join(alice, "a") and reg.join(alice, "b")
    assert reg.join(alice, "a") is False  # already subscribed: fine at the cap
    with pytest.raises(TooManyChannels) as refused:
        reg.join(alice, "c")
    assert refused.value.code == "too_many_channels"
    assert alice.channels == {"a", "b"} and "c" not in reg.channels


class Recorder:
    """A Lifecycle that records what the registry tells it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def joined(self, session: Session, channel: str) -> None:
        self.seen.append(("joined", session.client_id, channel))

    def left(self, session: Session, channel: str) -> None:
        self.seen.append(("left", session.client_id, channel))

    def ended(self, session: Session, reason: str) -> None:
        self.seen.append(("ended", session.client_id, f"{reason}:{sorted(session.channels)}"))


def test_the_lifecycle_hears_real_joins_leaves_and_ends_never_moves() -> None:
    reg = registry(session_ttl=0.0)
    heard = reg.lifecycle = Recorder()
    a = reg.create("a", "t", user_id="u")
    reg.join(a, "c1")
    reg.join(a, "c1")  # already: nothing
    reg.join(a, "c2")
    reg.leave(a, "c1")
    reg.leave(a, "c1")  # not subscribed: nothing
    reg.end("a", "expired")
    b = reg.create("b", "t")
    reg.join(b, "c3")
    reg.let_go("b")  # moved to another node: nothing
    reg.adopt(b)  # and back: nothing
    assert heard.seen == [("joined", "a", "c1"), ("joined", "a", "c2"), ("left", "a", "c1"),
                          ("ended", "a", "expired:['c2']"), ("joined", "b", "c3")]
    outbox = FakeOutbox()
    reg.attach(b, outbox)
    reg.detach(b, outbox)  # SESSION_TTL=0: the drop ends it
    assert heard.seen[-1] == ("ended", "b", "disconnected:[]")


def test_the_registry_indexes_each_users_sessions() -> None:
    reg = registry()
    a = reg.create("a", "t", user_id="alice")
    reg.create("b", "t", user_id="alice")
    reg.create("c", "t")
    assert list(reg.users) == ["alice"] and list(reg.users["alice"]) == ["a", "b"]
    assert [s.client_id for s in reg.select(user_id="alice")] == ["a", "b"]
    reg.join(a, "news")
    assert [s.client_id for s in reg.select(user_id="alice", channel="news")] == ["a"]
    reg.end("a")
    reg.let_go("b")
    assert reg.users == {}
    assert a.describe()["user_id"] == "alice"
