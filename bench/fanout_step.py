"""Time one fan-out per delivery through real connections, the kernel left out, in a checkout.

    python bench/fanout_step.py CHECKOUT [--sessions 1000] [--payload 250]
    python bench/fanout_step.py CHECKOUT --options [--sizes 250,16070]

Imports ``server`` from CHECKOUT (a worktree, or ``git archive main | tar -x -C DIR``), attaches
a :class:`server.ws.Connection` to every session whose transport is a stub (``write`` is a C
no-op: the bytes are built, framed and handed over, never sent), fills every history, and prints
the best of 7 runs of ``SessionRegistry.fan_out``, in nanoseconds per delivery: the Python
work of a delivery — ``seq``, history, the frame's bytes, its RFC 6455 header, the connection's
checks and the write call. The kernel's share (the ``send`` system call, ~7-9 us per delivery
on the project's machine) is what ``bench/wire_cost.py`` adds. Run it alternately on two
checkouts to compare them on a noisy machine; ``--payload`` sets the frame's size in bytes
(about; default 250, the benchmark's frame).

``--options`` instead times the per-recipient bytes work of the ways a per-session ``seq`` can
coexist with a broadcast's shared bytes (docs/BENCHMARKS.md, "Prepared frames"), best of 7 ×
1,000,000, in nanoseconds: what each costs per delivery before the write itself, for payloads
of ``--sizes`` bytes (about; default 250 and 16,070).
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
    parser.add_argument("--payload", type=int, default=250,
                        help="bytes per frame, about (default: 250)")
    parser.add_argument("--options", action="store_true")
    parser.add_argument("--sizes", default="250,16070",
                        help="payload sizes in bytes for --options, comma-separated")
    args = parser.parse_args()
    sys.path.insert(0, args.checkout)
    if args.options:
        time_options([int(size) for size in args.sizes.split(",")])
        return
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
        conn = ws_module.Connection(stub_ws, request, session, 1000,  # type: ignore[arg-type]
                                    1 << 24)
        conn.start()
        registry.attach(session, conn)
        sessions.append(session)
    pad = "x" * max(0, args.payload - 150)  # 100 by default, as before --payload existed
    frame = protocol.encode(protocol.server_frame("bench", {"i": 1, "t": 1, "p": pad}))
    for _ in range(110):  # full histories: every append also drops the oldest frame
        registry.fan_out(sessions, frame)
    assert all(s.outbox.queue is None for s in sessions), "a frame was queued, not written"
    best = min(timeit.repeat(lambda: registry.fan_out(sessions, frame), number=100,
                             repeat=7)) / (100 * args.sessions)
    print(f"fanout {best * 1e9:.1f} ns/delivery ({len(frame)}-byte frame)")


def time_options(sizes: list[int]) -> None:
    """Per recipient, for broadcasts of about ``sizes`` bytes at seq 12345: the bytes each
    design builds and the buffers it hands to ``transport.writelines`` (a C no-op here)."""
    for size in sizes:
        pad = max(0, size - 70)
        print(f"payload {pad + 70} bytes:")
        _time_options(pad)


def _time_options(pad: int) -> None:
    from server.protocol import TEXT_FRAME_HEADERS, text_frame_header

    tail = b'"type":"bench","data":{"i":1,"t":1,"pad":"' + b"x" * pad + b'"},"timestamp":"x"}'
    body = b"{" + tail[:-1]  # the broadcast without its closing brace
    width = 10  # digits kept for seq in the fixed-width design
    fixed = bytearray(text_frame_header(len(tail) + 8 + width) + b'{"seq":' + b" " * width + b","
                      + tail)
    at = len(fixed) - len(tail) - 1 - width
    sink: deque[Any] = deque(maxlen=0)
    writelines = sink.extend
    headers = TEXT_FRAME_HEADERS
    seq = 12345
    designs = {
        # Today's frame: seq first, spliced into a copy of the payload (which history keeps),
        # the header beside it (no second copy).
        "seq first, spliced copy + header": lambda: writelines(
            (headers[len(d := b'{"seq":%d,%b' % (seq, tail))], d)),
        # Shared bytes: only a small per-session head is built; the payload itself is the
        # broadcast's own bytes object, the same for every recipient (history would have to
        # keep the shared tail and its seq apart: issue 18).
        "seq first, shared tail": lambda: writelines(
            (headers[len(h := b'{"seq":%d,' % seq) + len(tail)] + h, tail)),
        # seq last: the shared body first, then a small per-session suffix; the header
        # depends on the suffix's length, so it is a third buffer.
        "seq last, shared body": lambda: writelines(
            (headers[len(body) + len(x := b',"seq":%d}' % seq)], body, x)),
        # A fixed-width, space-padded seq patched into a copy of one prepared frame.
        "fixed width, patched copy": lambda: (
            f := bytearray(fixed), f.__setitem__(slice(at, at + width), b"%*d" % (width, seq)),
            writelines((f,))),
    }
    for name, step in designs.items():
        best = min(timeit.repeat(step, number=1_000_000, repeat=7)) / 1_000_000
        print(f"{best * 1e9:7.1f} ns  {name}")


if __name__ == "__main__":
    main()
