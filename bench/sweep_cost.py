"""What one pass of the liveness sweep (``server.ws.sweep_liveness``) costs, per socket.

    python -m bench.sweep_cost CHECKOUT [--sockets 15000]

Real ``Connection`` and ``FrameGuard`` objects from CHECKOUT, behind stand-ins for aiohttp's
``Request`` (its ``protocol`` property) and ``RequestHandler`` (its ``_payload_parser`` slot):
the pass the sweep makes every WS_HEARTBEAT / 4, in chunks of ``SWEEP_CHUNK`` sockets, over
sockets that all sent something since the last pass (the common case: each is counted, none
is pinged). Prints the best of 7 × 20 passes, per pass and per socket, and the longest the
event loop is held (one chunk).
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--sockets", type=int, default=15_000)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.checkout))
    from server.ws import SWEEP_CHUNK, Connection, FrameGuard, sweep_liveness

    class Handler:
        __slots__ = ("_payload_parser",)

        def __init__(self) -> None:
            self._payload_parser = FrameGuard(None, None)

    class Request:
        def __init__(self) -> None:
            self._protocol = Handler()

        @property
        def protocol(self) -> Handler:
            return self._protocol

    conns: list[Any] = [Connection(None, Request(), None, 1, 1)  # type: ignore[arg-type]
                        for _ in range(args.sockets)]

    def heard_from_all() -> None:
        for conn in conns:
            conn.request._protocol._payload_parser.quiet = 0

    def one_pass() -> None:
        heard_from_all()
        snapshot = list(conns)
        for start in range(0, len(snapshot), SWEEP_CHUNK):
            sweep_liveness(snapshot[start:start + SWEEP_CHUNK], "")

    sweep = min(timeit.repeat(one_pass, number=20, repeat=7)) / 20
    reset = min(timeit.repeat(heard_from_all, number=20, repeat=7)) / 20
    cost = sweep - reset
    n = args.sockets
    print(f"{n} sockets: one pass {cost * 1e3:.2f} ms ({cost / n * 1e9:.0f} ns per socket); "
          f"the loop is held at most {cost * min(SWEEP_CHUNK, n) / n * 1e3:.2f} ms (one chunk)")


if __name__ == "__main__":
    main()
