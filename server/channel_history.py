"""Channel history on one node: the recent frames of each channel whose rule keeps some
(``history`` in CHANNEL_RULES), for a new subscriber to fetch (``channel_history`` frame).

Bounded three ways, as the cluster's Redis rings are (server/cluster/channels.py): frames
per channel (the rule's ``history``), bytes per channel (``CHANNEL_HISTORY_BYTES``: the
oldest go; a frame larger than that is not kept), and channels (``CHANNEL_HISTORY_CHANNELS``:
the ring written least recently is dropped); a ring untouched for ``CHANNEL_HISTORY_TTL``
seconds is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from server.metrics import HOT


class ChannelRing:
    __slots__ = ("bytes", "frames", "written_at")

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()
        self.bytes = 0
        self.written_at = 0.0


class ChannelRings:
    """Every channel's ring, least recently written first."""

    def __init__(self, *, max_bytes: int, max_channels: int, ttl: float) -> None:
        self.max_bytes = max_bytes
        self.max_channels = max_channels
        self.ttl = ttl
        self.rings: OrderedDict[str, ChannelRing] = OrderedDict()

    def record(self, channel: str, frame: bytes, keep: int) -> None:
        """Keep ``frame`` as the channel's newest, with at most ``keep`` frames."""
        if len(frame) > self.max_bytes:
            HOT.limit_hit("channel_history_bytes")
            return
        ring = self.rings.pop(channel, None) or ChannelRing()
        self.rings[channel] = ring  # the most recently written, last
        ring.frames.append(frame)
        ring.bytes += len(frame)
        ring.written_at = time.monotonic()
        while len(ring.frames) > keep or ring.bytes > self.max_bytes:
            if len(ring.frames) <= keep:
                HOT.limit_hit("channel_history_bytes")
            ring.bytes -= len(ring.frames.popleft())
        while len(self.rings) > self.max_channels:
            self.rings.popitem(last=False)
            HOT.limit_hit("channel_history_channels")

    def recent(self, channel: str, limit: int) -> list[bytes]:
        """The channel's newest ``limit`` frames, oldest first."""
        ring = self.rings.get(channel)
        if ring is None:
            return []
        if time.monotonic() - ring.written_at > self.ttl:
            del self.rings[channel]
            return []
        frames = ring.frames
        return list(frames)[-limit:] if limit < len(frames) else list(frames)
