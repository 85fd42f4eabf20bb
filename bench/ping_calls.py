"""Python calls per WebSocket round trip (``ping`` → ``pong``), counted with cProfile.

    python -m bench.ping_calls CHECKOUT [--target switchboard|bare] [--pings 2000] [--top 25]

Imports ``server`` (or ``bench.bare_server``) from CHECKOUT (a worktree, or
``git archive main | tar -x -C DIR``) and serves the target's WebSocket app in this process on
uvloop (``bench.api_calls.serve``), with the round-trip scenario's settings (no frame rate
limit, as ``make bench`` runs it). A client process sends ``{"type":"ping"}`` — the frame
``make bench``'s round-trip scenario sends — and waits for the answer, ``--pings`` times, then
as many again: cProfile counts every Python call this process makes during each batch, and
the difference between the two batches divided by ``--pings`` is the calls per round trip,
fixed costs cancelled. Call counts do not move between runs on a shared machine, unlike
timings. ``--top N`` prints where they are (``bench.api_calls.print_breakdown``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys


def client_main(port: int, pings: int, target: str) -> None:
    import aiohttp
    import uvloop

    async def run() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"http://127.0.0.1:{port}/ws") as ws:
            if target == "switchboard":
                await ws.receive()  # connection_established
            for batch in range(3):  # warm-up, N pings, 2N pings
                print("READY", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                for _ in range(pings * (2 if batch == 2 else 1)):
                    await ws.send_str('{"type":"ping"}')
                    msg = await ws.receive()
                    assert msg.type is aiohttp.WSMsgType.TEXT, msg
            print("DONE", flush=True)

    uvloop.run(run())


async def measure(args: argparse.Namespace) -> None:
    from bench.api_calls import print_breakdown, run_batches, serve

    # The round-trip scenario's settings (bench/run.py): no frame rate limit.
    runners, ws_port, _ = await serve(args.target, ws_rate_limit=1e6, ws_rate_burst=1_000_000)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.ping_calls", args.checkout, "--client", str(ws_port),
        "--pings", str(args.pings), "--target", args.target,
        env={**os.environ, "PYTHONPATH": args.checkout},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    totals, _, stats = await run_batches(client)
    for runner in runners:
        await runner.cleanup()
    print(f"{args.target}: {(totals[1] - totals[0]) / args.pings:.1f} Python calls per round "
          f"trip")
    if args.top and stats is not None:
        print_breakdown(stats, 2 * args.pings, args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--target", choices=("switchboard", "bare"), default="switchboard")
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.checkout))
    if args.client:
        client_main(args.client, args.pings, args.target)
        return
    import uvloop

    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
