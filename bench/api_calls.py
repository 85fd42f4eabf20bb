"""Python calls per ``POST /send_message``, counted with cProfile, in a checkout.

    python -m bench.api_calls CHECKOUT [--target switchboard|bare] [--requests 2000] [--top 25]

Imports ``server`` (or ``bench.bare_server``) from CHECKOUT (a worktree, or
``git archive main | tar -x -C DIR``) and serves both of the target's apps in this process on
uvloop. A client process (``bench.loadgen``'s raw WebSocket client and keep-alive HTTP client)
connects one WebSocket client and sends ``--requests`` ``POST /send_message`` to it, one at a
time, then as many again: cProfile counts every Python call this process makes during each
batch, and the difference between the two batches divided by ``--requests`` is the calls per
request, fixed costs cancelled. Unlike timings on a shared machine, call counts do not move
between runs, so this is how the unicast path's cost is compared between checkouts and
against bare aiohttp. ``--top N`` prints the functions with the most calls in the second
batch (where the remaining cost is).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import subprocess
import sys
from typing import Any

TOKEN = "bench-token"


def client_main(ws_port: int, api_port: int, requests: int) -> None:
    """The client process: one WebSocket client, then batches of requests on stdin's cue."""
    import uvloop

    from bench import loadgen

    async def run() -> None:
        ep = loadgen.Endpoint("target", ws_port, api_port, TOKEN)
        coll = loadgen.Collector()
        coll.u_seen = bytearray(4 * requests)  # the client checks each unicast frame once
        conns, errors = await loadgen.connect_clients(ep, coll, 1)
        assert not errors, errors
        http = await loadgen.HttpConn.open(ep)
        loop = asyncio.get_running_loop()
        k = 0
        for batch in range(3):  # warm-up, N requests, 2N requests
            print("READY", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            for _ in range(requests * (2 if batch == 2 else 1)):
                status, body = await http.post("/send_message", {
                    "client_id": conns[0].client_id, "content": f"{k}:0"})
                assert status == 200, (status, body)
                k += 1
        print("DONE", flush=True)
        http.close()
        loadgen.close_clients(conns)

    uvloop.run(run())


async def serve(target: str) -> tuple[Any, int, int]:
    """Start the target's two apps on free ports: (runners, ws_port, api_port)."""
    from aiohttp import web

    if target == "bare":
        from bench.bare_server import BareGateway, build_apps

        ws_app, api_app = build_apps(BareGateway(TOKEN, 30.0))
    else:
        from server.app import create_apps
        from server.config import Settings
        from server.logging_setup import configure_logging

        configure_logging("warning")
        ws_app, api_app = create_apps(Settings(ws_host="127.0.0.1", api_host="127.0.0.1",
                                               api_token=TOKEN))
    runners, ports = [], []
    for app in (ws_app, api_app):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    return runners, ports[0], ports[1]


async def measure(args: argparse.Namespace) -> None:
    runners, ws_port, api_port = await serve(args.target)
    env = {**os.environ, "PYTHONPATH": args.checkout}
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.api_calls", args.checkout, "--client", f"{ws_port},{api_port}",
        "--requests", str(args.requests), env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    totals: list[int] = []
    stats = None
    line = (await client.stdout.readline()).decode().strip()
    for batch in range(3):  # warm-up, N requests, 2N requests
        if line != "READY":
            raise SystemExit(f"client failed before batch {batch}: {line!r}")
        profile = cProfile.Profile()
        if batch:
            profile.enable()
        client.stdin.write(b"go\n")
        await client.stdin.drain()
        line = (await client.stdout.readline()).decode().strip()  # the batch is done
        if batch:
            profile.disable()
            stats = pstats.Stats(profile)
            totals.append(stats.total_calls)  # type: ignore[attr-defined]
    await client.wait()
    for runner in runners:
        await runner.cleanup()
    per_request = (totals[1] - totals[0]) / args.requests
    print(f"{args.target}: {per_request:.1f} Python calls per POST /send_message")
    if args.top and stats is not None:
        print_breakdown(stats, 2 * args.requests, args.top)


def _package(filename: str) -> str:
    """Who a call is charged to: a library, the standard library, or a Switchboard module."""
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0].removesuffix(".py")
    if "/lib/python3" in filename or filename.startswith("<frozen"):
        return "stdlib"
    if filename == "~":
        return "builtins"
    parts = filename.rsplit("/", 2)
    return "/".join(parts[-2:])


def print_breakdown(stats: Any, requests: int, top: int) -> None:
    """Calls per request charged to the code that made them (a built-in's calls go to its
    caller's package), then the ``top`` most called functions."""
    by_caller: dict[str, float] = {}
    for (_, _, _), (_, calls, _, _, callers) in stats.stats.items():
        if not callers:
            by_caller["(event loop)"] = by_caller.get("(event loop)", 0) + calls
        for caller, info in callers.items():
            package = _package(caller[0])
            by_caller[package] = by_caller.get(package, 0) + info[1]
    print("calls per request, by the package making them:")
    for package, calls in sorted(by_caller.items(), key=lambda kv: -kv[1]):
        if calls / requests >= 0.5:
            print(f"  {calls / requests:6.1f}  {package}")
    print(f"the {top} most called functions (calls per request):")
    rows = sorted(((v[1] / requests, f"{_package(k[0])}:{k[1]}({k[2]})")
                   for k, v in stats.stats.items()), reverse=True)
    for calls, where in rows[:top]:
        print(f"  {calls:6.2f}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--target", choices=("switchboard", "bare"), default="switchboard")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--client", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.checkout))
    if args.client:
        ws_port, api_port = map(int, args.client.split(","))
        client_main(ws_port, api_port, args.requests)
        return
    import uvloop

    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
