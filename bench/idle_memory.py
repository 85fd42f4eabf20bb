"""Python memory per idle connection, by allocation site, with tracemalloc, in a checkout.

    python -m bench.idle_memory CHECKOUT [--target switchboard|bare] [--clients 2000]

Imports ``server`` (or ``bench.bare_server``) from CHECKOUT and serves its WebSocket app in this
process on uvloop; a client process (``bench.loadgen``'s raw clients) opens ``--clients``
connections and holds them. tracemalloc snapshots taken before and after (after a full
collection) are compared: the bytes still allocated per connection, in total and by source
line (the first frame of each allocation). RSS, which ``make bench``'s idle scenario reports,
adds the allocator's and the kernel's share (socket buffers) to this.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tracemalloc
from typing import Any


def client_main(port: int, clients: int) -> None:
    import uvloop

    from bench import loadgen

    async def run() -> None:
        ep = loadgen.Endpoint("target", port, 0, "")
        conns, errors = await loadgen.connect_clients(ep, loadgen.Collector(), clients)
        print(f"READY {len(conns) - len(errors)}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        loadgen.close_clients(conns)

    uvloop.run(run())


async def serve(target: str) -> tuple[Any, int]:
    from aiohttp import web

    if target == "bare":
        from bench.bare_server import BareGateway, build_apps

        ws_app, _ = build_apps(BareGateway("", 30.0))
    else:
        from server.app import create_apps
        from server.config import Settings
        from server.logging_setup import configure_logging

        configure_logging("warning")
        ws_app, _ = create_apps(Settings(ws_host="127.0.0.1", api_host="127.0.0.1",
                                         max_connections=20_000))
    runner = web.AppRunner(ws_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def measure(args: argparse.Namespace) -> None:
    runner, port = await serve(args.target)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.idle_memory", args.checkout, "--client", str(port),
        "--clients", str(args.clients), env={**os.environ, "PYTHONPATH": args.checkout},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    ready = (await client.stdout.readline()).decode().split()
    if ready != ["READY", str(args.clients)]:
        raise SystemExit(f"the clients did not all connect: {ready}")
    await asyncio.sleep(1.0)  # the last handshakes' handlers reach their read loops
    gc.collect()
    after = tracemalloc.take_snapshot()
    n = args.clients
    stats = after.compare_to(before, "lineno")
    print(f"{args.target}: {sum(s.size_diff for s in stats) / n / 1024:.2f} KB per idle "
          f"connection traced by tracemalloc ({n} connections)")
    for stat in stats[:args.top]:
        if abs(stat.size_diff / n) >= 4:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1]
            print(f"  {stat.size_diff / n:6.0f} B {stat.count_diff / n:5.1f} objects  "
                  f"{where}:{frame.lineno}")
    client.stdin.write(b"done\n")
    await client.stdin.drain()
    await client.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--target", choices=("switchboard", "bare"), default="switchboard")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.checkout))
    if args.client:
        client_main(args.client, args.clients)
        return
    import uvloop

    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
