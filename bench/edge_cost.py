"""Time the per-frame steps issue 11 touched, in one checkout.

    python bench/edge_cost.py CHECKOUT

Imports ``server`` from CHECKOUT (a worktree, or ``git archive main | tar -x -C DIR``) and
prints, in nanoseconds (best of 7 runs):

* ``fanout``: ``SessionRegistry.fan_out`` per delivery, 1,000 sessions whose histories are full
  (the steady state: every append also drops the oldest frame, and the byte count follows);
* ``inbound``: a client's ``ping`` frame through the frame-header check that enforces RFC 6455's
  masking rule (``server.ws.FrameGuard``, absent before issue 11) and
  ``protocol.decode_client_frame``: the Python work a frame costs before its handler runs.

Run it alternately on two checkouts to compare them on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from typing import Any

SESSIONS = 1000
INBOUND = 100_000


class _Outbox:
    def push(self, data: bytes) -> bool:
        return True

    def push_parts(self, head: bytes, tail: bytes) -> bool:
        return True

    def close_soon(self, code: int, reason: str) -> None:
        return None


class _Parser:
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        return False, b""


def _masked(payload: bytes) -> bytes:
    key = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + key + bytes(
        b ^ key[i % 4] for i, b in enumerate(payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    args = parser.parse_args()
    sys.path.insert(0, args.checkout)
    from server import protocol
    from server import ws as ws_module
    from server.sessions import SessionRegistry

    registry: Any = SessionRegistry(history_limit=1000, session_ttl=300.0)
    sessions = []
    for n in range(SESSIONS):
        session = registry.create(f"c{n}", "bench")
        registry.attach(session, _Outbox())
        sessions.append(session)
    frame = protocol.encode(protocol.server_frame("tick", {"n": 1, "p": "x" * 100}))
    for _ in range(1001):  # full histories
        registry.fan_out(sessions, frame)
    fanout = min(timeit.repeat(lambda: registry.fan_out(sessions, frame), number=100,
                               repeat=7)) / (100 * SESSIONS)

    payload = b'{"type":"ping"}'
    wire = _masked(payload)
    guard_class = getattr(ws_module, "FrameGuard", None)
    decode = protocol.decode_client_frame

    if guard_class is not None:
        guard = guard_class(_Parser(), None)

        def inbound() -> None:
            for _ in range(INBOUND):
                guard.feed_data(wire)
                decode(payload)
    else:
        def inbound() -> None:
            for _ in range(INBOUND):
                decode(payload)

    per_frame = min(timeit.repeat(inbound, number=1, repeat=7)) / INBOUND
    print(f"fanout {fanout * 1e9:.1f} inbound {per_frame * 1e9:.1f}")


if __name__ == "__main__":
    main()
