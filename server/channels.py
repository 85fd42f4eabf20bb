"""Channels as users see them (PRODUCT.md section 8): permissions, publications, presence,
join/leave frames, channel history and lifecycle events, on one node and in a cluster alike.

:class:`ChannelService` is the gateway's (``gateway.channels``). Handlers, the API and the
socket endpoint call it; it asks :class:`~server.channel_rules.ChannelRules` (and the
subscribe/publish webhooks) what is allowed, the registry to subscribe, the gateway to
deliver (one fan-out path), and the :class:`~server.seams.Directory` for what every node
shares: the channels' members and their recent frames.

Membership changes
    The registry tells the service (:class:`~server.sessions.Lifecycle`, synchronously) when a
    session really joins or leaves a channel: a subscribe, an unsubscribe, and the end of a
    session (expired, evicted, ended by the API) — never a socket drop (an offline session is
    still a member until it expires: a resume is no leave and join) nor a session moving to
    another node. The service queues the change and one task records the queue, in order,
    in batches (``Directory.record_membership``); for each change that changed something it
    emits ``member_added`` / ``member_removed`` (and ``channel_occupied`` /
    ``channel_vacated`` for a channel's first / last member anywhere) and, where the rule
    says ``join_leave``, sends the channel's other subscribers a ``join`` / ``leave`` frame.
    Whoever records a change first is the one that announces it, so each fires once over the
    cluster. Nothing of this is on the delivery path. System channels (``tool_activity``) are
    not tracked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import structlog

from server.channel_rules import Allow, AskWebhook, ChannelRules, Decision, Deny
from server.errors import (
    ClientNotFound,
    ForbiddenChannel,
    ForbiddenError,
    InvalidChannel,
    SwitchboardError,
)
from server.metrics import HOT
from server.seams import MemberChange
from server.sessions import Session

if TYPE_CHECKING:
    from server.channel_webhooks import ChannelWebhooks
    from server.events import EventEmitter
    from server.gateway import Gateway

log = structlog.get_logger("switchboard.channels")

#: Membership changes recorded by one directory call.
BATCH = 256
#: Seconds between two attempts to record changes while the cluster cannot be reached.
RETRY_DELAY = 0.5
#: Seconds between two looks for members whose session is gone without leaving (a node died).
STALE_SWEEP_INTERVAL = 30.0
#: Members one sweep looks at.
STALE_SWEEP_BUDGET = 2000
#: How long a read waits for the other nodes to record what they queued.
SYNC_TIMEOUT = 2.0


class Ended(NamedTuple):
    """A session's end, queued behind the leaves of its channels (``session_ended`` follows
    their ``member_removed``)."""

    client_id: str
    user_id: str | None
    reason: str


class ChannelService:
    """See the module doc. ``hooks`` / ``events`` are None when nothing is configured."""

    def __init__(self, gateway: Gateway, rules: ChannelRules,
                 hooks: ChannelWebhooks | None = None, events: EventEmitter | None = None
                 ) -> None:
        self.gateway = gateway
        self.rules = rules
        self.hooks = hooks
        self.events = events
        self.changes: deque[MemberChange | Ended] = deque()
        #: Changes queued and changes recorded since start: a change is recorded (in the
        #: shared membership, its events emitted) once ``recorded`` reaches its number.
        self.noted = 0
        self.recorded = 0
        self._progress = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        gateway.registry.lifecycle = self
        gateway.session_ops["subscribe"] = self._subscribe_here
        gateway.session_ops["unsubscribe"] = self._unsubscribe_here
        peers = gateway.backend.peers
        for op in ("subscribe", "unsubscribe"):
            peers.handle(op, gateway.for_peer(op))
        peers.handle("channels_flush", self._flush_for_peer)

    @property
    def system_channels(self) -> frozenset[str]:
        return self.rules.system_channels

    # --- the registry's Lifecycle -----------------------------------------------------------

    def joined(self, session: Session, channel: str) -> None:
        if channel not in self.rules.system_channels:
            self._note(MemberChange(True, channel, session.client_id, session.user_id))

    def left(self, session: Session, channel: str) -> None:
        if channel not in self.rules.system_channels:
            self._note(MemberChange(False, channel, session.client_id, session.user_id))

    def ended(self, session: Session, reason: str) -> None:
        for channel in sorted(session.channels):
            self.left(session, channel)
        self._note(Ended(session.client_id, session.user_id, reason))

    def started(self, session: Session) -> None:
        """A new session (not a resume, not a move)."""
        self._emit("session_started", client_id=session.client_id, user_id=session.user_id,
                   client_type=session.client_type)

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit_event(kind, **fields)

    def _note(self, change: MemberChange | Ended) -> None:
        self.noted += 1
        self.changes.append(change)
        self._idle.clear()
        self._wake.set()

    # --- the recorder -----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._record_forever(), name="channel-membership"),
                       loop.create_task(self._sweep_forever(), name="channel-stale-sweep")]

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 - a drain budget
        """Record what is queued (for up to ``timeout`` seconds), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.flush()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.changes:
            log.warning("membership_changes_unrecorded", count=len(self.changes))

    async def flush(self) -> None:
        """Return once every change queued so far is recorded and announced."""
        if self._tasks:
            await self._idle.wait()

    async def settled(self) -> None:
        """Return once every change queued so far here is recorded (at most SYNC_TIMEOUT).

        A client's subscribe or unsubscribe is answered after this: the answer then means
        the cluster's membership has it, so what the client (or whoever it tells) does next
        on any node is ordered after it. Recording is asynchronous; without this a join
        acknowledged on one node could be recorded after another node's join and leave, and
        the channel would be seen vacated and occupied again while it never was empty.
        Unlike :meth:`flush`, it waits for the changes before it only, not for a quiet queue.
        """
        if not self._tasks:
            return
        target = self.noted
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SYNC_TIMEOUT):
                while self.recorded < target:
                    await self._progress.wait()

    async def sync(self) -> None:
        """:meth:`flush` on every node (those that answer within SYNC_TIMEOUT): what any
        node saw before is in the shared membership now."""
        others = await self.gateway.backend.peers.publish_all("channels_flush", {})
        await self.flush()
        await others.replies(SYNC_TIMEOUT)

    async def _flush_for_peer(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SYNC_TIMEOUT):
                await self.flush()
        return {"flushed": not self.changes}

    async def _record_forever(self) -> None:
        directory = self.gateway.backend.directory
        changes = self.changes
        while True:
            if not changes:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [changes.popleft() for _ in range(min(BATCH, len(changes)))]
            members = [change for change in batch if isinstance(change, MemberChange)]
            try:
                results = iter(await directory.record_membership(members) if members else ())
            except Exception as exc:  # the cluster cannot be reached: keep them, retry
                changes.extendleft(reversed(batch))
                log.warning("membership_not_recorded", changes=len(changes),
                            error=f"{type(exc).__name__}: {exc}", retry_in=RETRY_DELAY)
                await asyncio.sleep(RETRY_DELAY)
                continue
            try:
                for change in batch:
                    if isinstance(change, Ended):
                        self._emit("session_ended", client_id=change.client_id,
                                   user_id=change.user_id, reason=change.reason)
                        continue
                    changed, edge = next(results)
                    if changed:
                        try:
                            await self._announce(change, edge)
                        except Exception:  # one failed announcement must not stop the rest
                            log.exception("membership_announce_failed",
                                          channel=change.channel, client_id=change.client_id)
            finally:
                self.recorded += len(batch)
                self._progress.set()
                self._progress = asyncio.Event()

    async def _announce(self, change: MemberChange, edge: bool) -> None:
        joined, channel, client_id, user_id = change
        fields = {"channel": channel, "client_id": client_id, "user_id": user_id}
        self._emit("member_added" if joined else "member_removed", **fields)
        if edge:
            self._emit("channel_occupied" if joined else "channel_vacated", channel=channel)
        rule = self.rules.rule_for(channel) if self.rules.enabled else None
        if rule is not None and rule.join_leave:
            with contextlib.suppress(SwitchboardError):  # best effort, like any broadcast
                await self.gateway.broadcast("join" if joined else "leave", fields,
                                             channel=channel, exclude=client_id,
                                             counted=False)

    async def _sweep_forever(self) -> None:
        directory = self.gateway.backend.directory
        while True:
            await asyncio.sleep(STALE_SWEEP_INTERVAL)
            try:
                for change in await directory.stale_members(STALE_SWEEP_BUDGET):
                    self._note(change)
            except Exception as exc:
                log.info("stale_member_sweep_failed", error=f"{type(exc).__name__}: {exc}")

    # --- client actions ---------------------------------------------------------------------

    def check_allow_list(self, channel: str) -> None:
        """``CHANNELS`` (the allow-list): another channel is ``invalid_channel``, with
        ``available_channels`` (seed 003's clients read them)."""
        registry = self.gateway.registry
        if not registry.channel_allowed(channel):
            raise InvalidChannel(f"Invalid channel: {channel}",
                                 details={"channel": channel,
                                          "available_channels": registry.available_channels()})

    async def subscribe(self, session: Session, channel: str) -> bool:
        """A client's ``subscribe``: allowed by the rules (and the subscribe webhook), the
        session joins. False when it was subscribed already. Raises ``InvalidChannel``,
        ``ForbiddenChannel`` or ``TooManyChannels``; nothing changes then."""
        self.check_allow_list(channel)
        if channel in self.rules.system_channels and not session.observer:
            raise ForbiddenError(
                f"{channel} is a system channel: open the connection with an observer_ticket "
                f"(POST /observer_ticket on the API) or a JWT whose roles include observer",
                code="forbidden_channel",
                details={"channel": channel, "reason": "system channel: observers only"})
        if channel in session.channels:
            return False
        decision = self.rules.decide("subscribe", channel, session.identity)
        await self._allowed("subscribe", decision, session, channel)
        registry = self.gateway.registry
        if not registry.holds(session):
            return False  # the session ended or moved while the webhook answered
        joined = registry.join(session, channel)
        await self.settled()
        return joined

    async def publish(self, session: Session, channel: str, data: dict[str, Any]
                      ) -> dict[str, Any]:
        """A client's ``publish``: allowed by the rule (and reviewed, maybe rewritten, by
        PUBLISH_WEBHOOK_URL), delivered to the channel's subscribers on every node as a
        ``publication`` frame {channel, data, from: {client_id, user_id}}."""
        decision = self.rules.decide("publish", channel, session.identity)
        verdict = await self._allowed("publish", decision, session, channel, data)
        if verdict.data is not None:
            data = verdict.data
        sender = {"client_id": session.client_id, "user_id": session.user_id}
        answer = await self.gateway.broadcast("publication", data, channel=channel,
                                              counted=False, sender=sender)
        return {"channel": channel, "message_id": answer["message_id"],
                "recipients": answer["recipients"], "queued": answer["queued"]}

    async def _allowed(self, action: Any, decision: Decision, session: Session, channel: str,
                       data: dict[str, Any] | None = None) -> Allow:
        """The final verdict (the webhook asked when the rule says so); raises
        ``ForbiddenChannel`` (or ``InvalidChannel`` off the allow-list) when refused."""
        if self.hooks is not None:
            verdict = await self.hooks.resolve(action, decision, session.identity,
                                               client_id=session.client_id, channel=channel,
                                               data=data, client_type=session.client_type)
        elif isinstance(decision, AskWebhook):  # pragma: no cover - start-up refuses it
            verdict = Deny("forbidden_channel", "no webhook is configured for this rule")
        else:
            verdict = decision
        if isinstance(verdict, Deny):
            if verdict.code == InvalidChannel.code:
                self.check_allow_list(channel)
            raise ForbiddenChannel(channel, verdict.reason, code=verdict.code)
        return verdict

    # --- presence ---------------------------------------------------------------------------

    async def presence(self, channel: str, *, limit: int, asker: Session | None = None,
                       everywhere: bool = False) -> dict[str, Any]:
        """Who is in ``channel``: its sessions (at most ``limit``) with their users. For a
        client (``asker``) the rule must allow presence; the API (``everywhere``) first has
        every node record what it queued, so it sees what happened anywhere just before."""
        if asker is not None:
            decision = self.rules.decide("presence", channel, asker.identity)
            if isinstance(decision, AskWebhook) and channel in asker.channels:
                decision = Allow(decision.rule)  # the webhook approved the subscription
            await self._allowed("presence", decision, asker, channel)
        if everywhere:
            await self.sync()
        else:
            await self.flush()
        found = await self.gateway.backend.directory.presence(channel, limit)
        for change in found.stale:
            self._note(change)
        truncated = found.total > len(found.members)
        if truncated:
            HOT.limit_hit("presence_listing")
        return {
            "channel": channel,
            "count": found.total,
            "sessions": [{"client_id": m.client_id, "user_id": m.user_id,
                          "connected": m.connected} for m in found.members],
            "users": sorted({m.user_id for m in found.members if m.user_id is not None}),
            "truncated": truncated,
        }

    # --- channel history --------------------------------------------------------------------

    def history_kept(self, channel: str) -> int:
        """How many recent frames ``channel``'s rule keeps (0: none)."""
        if not self.rules.enabled or channel in self.rules.system_channels:
            return 0
        rule = self.rules.rule_for(channel)
        return rule.history if rule is not None else 0

    async def history(self, session: Session, channel: str, limit: int | None
                      ) -> dict[str, Any]:
        """A subscriber's ``channel_history``: the channel's newest frames (at most its
        rule's ``history``), oldest first."""
        kept = self.history_kept(channel)
        if not kept:
            raise ForbiddenChannel(channel, "this channel keeps no history (its rule's "
                                            "history is 0)")
        if channel not in session.channels:
            raise ForbiddenChannel(channel, "subscribe to the channel first")
        wanted = kept if limit is None else min(limit, kept)
        frames = await self.gateway.backend.directory.channel_frames(channel, wanted)
        # One frame carries them all: it must fit the connection's send queue with room to
        # spare (the newest are kept).
        room = self.gateway.settings.send_queue_bytes // 2
        size = sum(len(f) for f in frames)
        while frames and size > room:
            size -= len(frames.pop(0))
        return {"channel": channel, "frames": [orjson.loads(f) for f in frames],
                "count": len(frames), "limit": wanted}

    # --- server-side subscriptions ----------------------------------------------------------

    def check_server_subscription(self, channel: str) -> None:
        """Raises unless the backend may subscribe a session to ``channel`` (not a system
        channel; on ``CHANNELS`` when set)."""
        verdict = self.rules.check_server_subscription(channel)
        if isinstance(verdict, Deny):
            if verdict.code == InvalidChannel.code:
                self.check_allow_list(channel)
            raise ForbiddenChannel(channel, verdict.reason, code=verdict.code)

    def join_claimed(self, session: Session, channels: tuple[str, ...]) -> None:
        """The JWT's ``subs``: channels the session joins at connect (and tells the client
        with ``subscribed`` frames, ``server_side: true``). A channel the server may not
        subscribe it to, or beyond MAX_CHANNELS_PER_CLIENT, is skipped and logged."""
        for channel in channels:
            try:
                self.check_server_subscription(channel)
                self._join_and_tell(session, channel)
            except SwitchboardError as exc:
                log.info("claimed_subscription_skipped", client_id=session.client_id,
                         channel=channel, code=exc.code, error=exc.message)

    def _join_and_tell(self, session: Session, channel: str) -> bool:
        registry = self.gateway.registry
        joined = registry.join(session, channel)
        if joined:
            self.gateway.emit(session, "subscribed", {
                "channel": channel, "channel_count": len(session.channels),
                "subscribers": len(registry.channels.get(channel, ())), "server_side": True})
        return joined

    async def subscribe_client(self, client_id: str, channel: str, *, subscribe: bool
                               ) -> dict[str, Any]:
        """``POST /clients/{id}/channels`` (``subscribe``) and ``DELETE
        /clients/{id}/channels/{channel}``, on the node holding the session."""
        if subscribe:
            self.check_server_subscription(channel)
        return await self.gateway.at_session(
            client_id, "subscribe" if subscribe else "unsubscribe", {"channel": channel})

    async def subscribe_user(self, user_id: str, channel: str, *, subscribe: bool
                             ) -> dict[str, Any]:
        """The same for every session of ``user_id`` (404 when it has none)."""
        if subscribe:
            self.check_server_subscription(channel)
        ids = await self.gateway.backend.directory.user_clients(user_id)
        results = []
        for client_id in ids:
            try:
                results.append(await self.gateway.at_session(
                    client_id, "subscribe" if subscribe else "unsubscribe",
                    {"channel": channel}))
            except ClientNotFound:
                continue  # it ended meanwhile
        if not results:
            raise ClientNotFound(f"user {user_id!r} has no session", code="user_not_found")
        return {"user_id": user_id, "channel": channel, "sessions": results}

    async def _subscribe_here(self, session: Session, header: dict[str, Any], body: bytes
                              ) -> dict[str, Any]:
        changed = self._join_and_tell(session, header["channel"])
        await self.settled()
        return {"client_id": session.client_id, "channel": header["channel"],
                "subscribed": True, "changed": changed,
                "channel_count": len(session.channels)}

    async def _unsubscribe_here(self, session: Session, header: dict[str, Any], body: bytes
                                ) -> dict[str, Any]:
        channel = header["channel"]
        was_subscribed = self.gateway.registry.leave(session, channel)
        await self.settled()
        if was_subscribed:
            self.gateway.emit(session, "unsubscribed", {
                "channel": channel, "was_subscribed": True,
                "channel_count": len(session.channels), "server_side": True})
        return {"client_id": session.client_id, "channel": channel, "subscribed": False,
                "changed": was_subscribed, "channel_count": len(session.channels)}
