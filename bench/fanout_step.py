"""Time one fan-out per delivery through real connections, the kernel left out, in a checkout.

    python bench/fanout_step.py CHECKOUT [--sessions 1000]

Imports ``server`` from CHECKOUT (a worktree, or ``git archive main | tar -x -C DIR``), attaches
a :class:`server.ws.Connection` to every session whose transport is a stub (``write`` is a C
no-op: the bytes are built, framed and handed over, never sent), fills every history, and prints
the best of 7 runs of ``SessionRegistry.fan_out``, in nanoseconds per delivery: the Python
work of a delivery — ``seq``, history, the frame's bytes, its RFC 6455 header, the connection's
checks and the write call. The kernel's share (the ``send`` system call, ~7-9 us per delivery
on the project's machine) is what ``bench/wire_cost.py`` adds. Run it alternately on two
checkouts to compare them on a noisy machine.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections import deque
from types import SimpleNamespace
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args()
    sys.path.insert(0, args.checkout)
    from server import protocol
    from server import ws as ws_module
    from server.sessions import SessionRegistry

    sink: deque[Any] = deque(maxlen=0)  # append: a C no-op that takes one argument
    transport = SimpleNamespace(write=sink.append, writelines=sink.extend, is_closing=bool,
                                get_write_buffer_size=int)
    handler = SimpleNamespace(_paused=False, transport=transport)
    stub_ws = SimpleNamespace(_writer=SimpleNamespace(compress=0))
    request = SimpleNamespace(protocol=handler, transport=transport)

    registry: Any = SessionRegistry(history_limit=100, session_ttl=300.0)
    sessions = []
    for n in range(args.sessions):
        session = registry.create(f"c{n}", "bench")
        conn = ws_module.Connection(stub_ws, request, session, 1000, 1 << 24,  # type: ignore
                                    "bench")
        conn.start()
        registry.attach(session, conn)
        sessions.append(session)
    frame = protocol.encode(protocol.server_frame("bench", {"i": 1, "t": 1, "p": "x" * 100}))
    for _ in range(110):  # full histories: every append also drops the oldest frame
        registry.fan_out(sessions, frame)
    assert all(s.outbox.queue is None for s in sessions), "a frame was queued, not written"
    best = min(timeit.repeat(lambda: registry.fan_out(sessions, frame), number=100,
                             repeat=7)) / (100 * args.sessions)
    print(f"fanout {best * 1e9:.1f} ns/delivery")


if __name__ == "__main__":
    main()
