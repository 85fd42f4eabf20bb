"""Time ``Connection.push`` — the per-delivery step of every fan-out — in one checkout.

    python bench/push_cost.py CHECKOUT [--flat]

Imports ``server.ws`` from CHECKOUT (a worktree, or ``git archive main | tar -x -C DIR``), gives
a :class:`~server.ws.Connection` a stub socket with a writer "running" (so push only queues:
no I/O, no task), and prints the best of 7 runs of 100,000 pushes, in nanoseconds per push.
Run it alternately on two checkouts to compare them on a noisy machine; ``--flat`` measures a
flat-profile connection (seed 004), which re-encodes every frame it is given.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from typing import Any

PUSHES = 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--flat", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, args.checkout)
    from server import protocol
    from server import ws as ws_module

    class StubSocket:
        _writer = None

    class StubSession:
        client_id = "0123456789abcdef0123456789abcdef"

    flat_class = getattr(ws_module, "FlatConnection", None)
    if args.flat and flat_class is None:
        parser.error(f"{args.checkout} has no flat profile")
    cls = flat_class if args.flat else ws_module.Connection
    conn: Any = cls.__new__(cls)
    for name, value in {"ws": StubSocket(), "request": None, "session": StubSession(),
                        "max_frames": 10**9, "max_bytes": 10**15, "peer": "bench",
                        "queue": None, "queued_bytes": 0, "backlog": [], "close_code": None,
                        "close_reason": "", "closed": False, "writer": object(),
                        "closing": None, "expiry": None, "direct": None}.items():
        setattr(conn, name, value)
    frame = protocol.server_frame("notification", {"message": "maintenance at 6"},
                                  extra={"channel": "news"})
    data = protocol.with_seq(protocol.encode(frame), 1)

    def run() -> None:
        for _ in range(PUSHES):
            conn.push(data)
        conn.queue.clear()
        conn.queued_bytes = 0

    best = min(timeit.repeat(run, number=1, repeat=7)) / PUSHES
    print(f"{best * 1e9:.1f}")


if __name__ == "__main__":
    main()
