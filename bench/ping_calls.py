"""Python calls per WebSocket round trip (``ping`` → ``pong``), counted with cProfile.

    python -m bench.ping_calls CHECKOUT [--target switchboard|bare] [--pings 2000] [--top 25]
    python -m bench.ping_calls CHECKOUT [--target switchboard|bare] --bytecodes [--top 25]
    valgrind --tool=callgrind --callgrind-out-file=DIR/cg.%p \
        python -m bench.ping_calls CHECKOUT [--target switchboard|bare] --callgrind DIR

Imports ``server`` (or ``bench.bare_server``) from CHECKOUT (a worktree, or
``git archive main | tar -x -C DIR``) and serves the target's WebSocket app in this process on
uvloop (``bench.api_calls.serve``), with the round-trip scenario's settings (no frame rate
limit, as ``make bench`` runs it). A client process sends ``{"type":"ping"}`` — the frame
``make bench``'s round-trip scenario sends — and waits for the answer, ``--pings`` times, then
as many again: cProfile counts every Python call this process makes during each batch, and
the difference between the two batches divided by ``--pings`` is the calls per round trip,
fixed costs cancelled. Call counts do not move between runs on a shared machine, unlike
timings. ``--top N`` prints where they are (``bench.api_calls.print_breakdown``).
``--bytecodes`` counts the bytecodes executed per round trip instead, by function
(``bench.api_calls.BytecodeCounter``). ``--callgrind DIR``, with this process run under
valgrind's callgrind as shown (the client process runs natively), dumps callgrind's counters
before and after each batch and prints the machine instructions this process executed per
round trip (batch 2N minus batch N): the interpreter, orjson, uvloop and libc included, the
kernel not. Like the call counts these repeat exactly, whatever else the machine does.
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
    from bench.api_calls import BytecodeCounter, print_breakdown, run_batches, serve

    # The round-trip scenario's settings (bench/run.py): no frame rate limit.
    runners, ws_port, _ = await serve(args.target, ws_rate_limit=1e6, ws_rate_burst=1_000_000)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.ping_calls", args.checkout, "--client", str(ws_port),
        "--pings", str(args.pings), "--target", args.target,
        env={**os.environ, "PYTHONPATH": args.checkout},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    bytecodes = BytecodeCounter() if args.bytecodes else None
    at_batch = None
    if args.callgrind:
        def at_batch(batch: int) -> None:
            subprocess.run(["callgrind_control", f"--dump=batch{batch}", str(os.getpid())],
                           check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    totals, _, stats = await run_batches(client, bytecodes=bytecodes, at_batch=at_batch,
                                         profile=not args.callgrind)
    for runner in runners:
        await runner.cleanup()
    if args.callgrind:
        # Dump k holds what ran between the calls for batch k-1 and batch k: file .3 is batch
        # N, file .4 batch 2N.
        n, twice_n = (_instructions(os.path.join(args.callgrind, f"cg.{os.getpid()}.{dump}"))
                      for dump in (3, 4))
        print(f"{args.target}: {(twice_n - n) / args.pings:,.0f} instructions per round trip")
        return
    if bytecodes is not None:
        bytecodes.report(args.target, "round trip", args.pings, args.top or 25)
        return
    print(f"{args.target}: {(totals[1] - totals[0]) / args.pings:.1f} Python calls per round "
          f"trip")
    if args.top and stats is not None:
        print_breakdown(stats, 2 * args.pings, args.top)


def _instructions(dump: str) -> int:
    """The instruction count in a callgrind dump file."""
    with open(dump) as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("summary:"))


def main() -> None:
    from bench.api_calls import counting_parser

    parser = counting_parser(__doc__, "round trip")
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--callgrind", default="", metavar="DIR",
                        help="under callgrind: instructions per round trip (see above)")
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
