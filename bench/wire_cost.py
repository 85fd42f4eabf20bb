"""CPU per delivered frame of one fan-out, in-process, user and system time apart.

    python bench/wire_cost.py CHECKOUT [--target switchboard|bare|floor] [--loop uvloop|asyncio]
                              [--payload BYTES]

Imports ``server`` (or ``bench.bare_server``) from CHECKOUT (a worktree, or
``git archive main | tar -x -C DIR``), serves its WebSocket app in this process on the chosen
event loop, and has a sink process (``bench.loadgen``'s raw clients on uvloop, which check
every frame) connect ``--clients`` sockets. It then calls the target's broadcast directly —
``Gateway.broadcast`` for Switchboard (frame built, encoded, fanned out with history, ``seq``,
queues and counters), ``BareGateway.deliver_all`` for bare aiohttp (frame built, encoded once,
``send_frame`` per socket) — ``--broadcasts`` times, paced so that the sink keeps up, and
prints this process's user and system CPU per delivery (``os.times``), with no HTTP request
or load generator in the measured process. The sink reports lost, duplicate and reordered
frames and seq gaps. Run it alternately on two checkouts, or targets, to compare them on a
noisy machine; it is the per-delivery measurement behind docs/BENCHMARKS.md's "wire path".

``--payload`` sets the size of each frame's payload on the wire (about 250 bytes by default,
the benchmark's frame; docs/BENCHMARKS.md "Large broadcasts"): the ``pad`` field is sized so
that Switchboard's frame (with its ``seq``) is about that long. Large frames need fewer
``--clients``/``--broadcasts`` and a longer ``--pause-ms`` for the sink to keep up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

#: Bytes of a benchmark frame besides its ``pad`` (type, i, t, message_id, timestamp, seq).
FRAME_OVERHEAD = 150


def sink_main(port: int, clients: int, broadcasts: int) -> None:
    """The sink process: connect, say READY, count until told to stop, print the checks."""
    import uvloop

    from bench import loadgen

    async def run() -> None:
        ep = loadgen.Endpoint("target", port, 0, "")
        coll = loadgen.Collector()
        coll.start_broadcasts(clients, broadcasts)
        conns, errors = await loadgen.connect_clients(ep, coll, clients,
                                                      n_broadcasts=broadcasts)
        print(f"READY {len(conns) - len(errors)}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await loadgen.wait_for(coll, lambda: coll.completed >= broadcasts, idle=5, total=60)
        lost = sum(broadcasts - sum(c.got) for c in conns)
        print(f"delivered {coll.delivered} lost {lost} duplicates {coll.duplicates} "
              f"reordered {coll.reordered} seq_gaps {coll.seq_gaps}", flush=True)
        loadgen.close_clients(conns)

    uvloop.run(run())


async def serve(target: str, payload: int) -> tuple[Any, Any, Any]:
    """Start the target's WebSocket app on a free port: (runner, port, broadcast function)."""
    from aiohttp import web

    pad = "x" * max(0, payload - FRAME_OVERHEAD)

    if target in ("bare", "floor"):
        import orjson

        from bench.bare_server import BareGateway, build_apps
        from bench.common import now_iso

        gw = BareGateway("", 30.0)
        ws_app, _ = build_apps(gw)

        def frame(i: int) -> dict[str, Any]:
            return {"type": "bench", "data": {"i": i, "t": time.monotonic_ns(), "pad": pad},
                    "message_id": os.urandom(16).hex(), "timestamp": now_iso()}

        if target == "bare":
            async def broadcast(i: int) -> None:
                await gw.deliver_all(frame(i))
        else:
            # The floor of any server on aiohttp + uvloop: one frame, serialised and framed
            # once (RFC 6455 header + payload), the same bytes written to every transport.
            async def broadcast(i: int) -> None:
                body = orjson.dumps(frame(i))
                n = len(body)
                header = (bytes((0x81, n)) if n < 126 else
                          b"\x81\x7e" + n.to_bytes(2, "big") if n < 65536 else
                          b"\x81\x7f" + n.to_bytes(8, "big"))
                data = header + body
                for ws in gw.clients.values():
                    ws._writer.transport.write(data)  # type: ignore[union-attr]
    else:
        from server.app import create_apps
        from server.config import Settings
        from server.keys import GATEWAY
        from server.logging_setup import configure_logging

        configure_logging("warning")

        settings = Settings(ws_host="127.0.0.1", api_host="127.0.0.1", ws_port=0, api_port=1,
                            max_connections=20_000)
        ws_app, _ = create_apps(settings)
        gateway = ws_app[GATEWAY]

        async def broadcast(i: int) -> None:
            await gateway.broadcast("bench", {"i": i, "t": time.monotonic_ns(), "pad": pad})
    runner = web.AppRunner(ws_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port, broadcast


async def measure(args: argparse.Namespace) -> None:
    runner, port, broadcast = await serve(args.target, args.payload)
    env = {**os.environ, "PYTHONPATH": args.checkout}
    sink = await asyncio.create_subprocess_exec(
        sys.executable, __file__, args.checkout, "--sink", str(port), "--clients",
        str(args.clients), "--broadcasts", str(args.broadcasts), env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert sink.stdout is not None and sink.stdin is not None
    ready = (await sink.stdout.readline()).decode().split()
    if not ready or ready[0] != "READY" or int(ready[1]) != args.clients:
        raise SystemExit(f"sink failed to connect: {ready}")
    sink.stdin.write(b"go\n")
    await sink.stdin.drain()
    pause = args.pause_ms / 1000
    before = os.times()
    for i in range(args.broadcasts):
        await broadcast(i)
        await asyncio.sleep(pause)  # pacing: the sink reads everything before the next
    after = os.times()
    checks = (await sink.stdout.readline()).decode().strip()
    await sink.wait()
    await runner.cleanup()
    deliveries = args.clients * args.broadcasts
    user = (after.user - before.user) / deliveries * 1e6
    system = (after.system - before.system) / deliveries * 1e6
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"{args.target} payload={args.payload} loop={loop} user {user:.2f} sys {system:.2f} total "
          f"{user + system:.2f} us/delivery ({checks})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--target", choices=("switchboard", "bare", "floor"), default="switchboard")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--payload", type=int, default=250,
                        help="bytes per frame on the wire, about (default: 250)")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=200)
    parser.add_argument("--pause-ms", type=float, default=20.0,
                        help="pause after each broadcast (the sink must keep up)")
    parser.add_argument("--sink", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.checkout))
    if args.sink:
        sink_main(args.sink, args.clients, args.broadcasts)
        return
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(measure(args))
    else:
        asyncio.run(measure(args))


if __name__ == "__main__":
    main()
