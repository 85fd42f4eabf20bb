"""Python calls per ``POST /send_message``, counted with cProfile, in a checkout.

    python -m bench.api_calls CHECKOUT [--target switchboard|bare] [--requests 2000] [--top 25]
    python -m bench.api_calls CHECKOUT [--target switchboard|bare] --bytecodes [--top 25]
    python -m bench.api_calls CHECKOUT --cpu [--rounds 7] [--requests 4000] [--concurrency 16]

Imports ``server`` (or ``bench.bare_server``) from CHECKOUT (a worktree, or
``git archive main | tar -x -C DIR``) and serves both of the target's apps in this process on
uvloop. A client process (``bench.loadgen``'s raw WebSocket client and keep-alive HTTP client)
connects one WebSocket client and sends ``--requests`` ``POST /send_message`` to it, one at a
time, then as many again: cProfile counts every Python call this process makes during each
batch, and the difference between the two batches divided by ``--requests`` is the calls per
request, fixed costs cancelled. Unlike timings on a shared machine, call counts do not move
between runs, so this is how the unicast path's cost is compared between checkouts and
against bare aiohttp. ``--top N`` prints the functions with the most calls in the second
batch (where the remaining cost is). ``--bytecodes`` counts the bytecodes executed per
request instead, by function (:class:`BytecodeCounter`, over the N batch).

``--cpu`` measures time instead of calls: the server's process CPU time per request (the
same batch difference, no profiler), for Switchboard and bare aiohttp in turn, each round in
fresh processes, the order alternating; it prints each round and the medians and their
ratio. ``--concurrency`` requests are in flight at once (from as many HTTP connections), to
``--clients`` WebSocket clients in turn, as in ``make bench``'s unicast scenario (16, 1000). On a shared machine
this is a quicker, steadier reading of the unicast path's CPU ratio than ``make bench``
(no load generator competing inside the measured process), not a replacement for it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

TOKEN = "bench-token"


def client_main(ws_port: int, api_port: int, requests: int, concurrency: int = 1,
                clients: int = 1) -> None:
    """The client process: ``clients`` WebSocket clients and ``concurrency`` HTTP
    connections, then batches of requests (round-robin over the clients) on stdin's cue."""
    import uvloop

    from bench import loadgen

    async def run() -> None:
        ep = loadgen.Endpoint("target", ws_port, api_port, TOKEN)
        coll = loadgen.Collector()
        coll.u_seen = bytearray(4 * requests)  # the client checks each unicast frame once
        conns, errors = await loadgen.connect_clients(ep, coll, max(clients, concurrency))
        assert not errors, errors
        https = [await loadgen.HttpConn.open(ep) for _ in range(concurrency)]
        loop = asyncio.get_running_loop()
        counter = 0

        async def worker(http: loadgen.HttpConn, count: int) -> None:
            nonlocal counter
            for _ in range(count):
                k, counter = counter, counter + 1
                status, body = await http.post("/send_message", {
                    "client_id": conns[k % len(conns)].client_id, "content": f"{k}:0"})
                assert status == 200, (status, body)

        for batch in range(3):  # warm-up, N requests, 2N requests
            print("READY", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            share = requests * (2 if batch == 2 else 1) // concurrency
            await asyncio.gather(*(worker(http, share) for http in https))
        print("DONE", flush=True)
        for http in https:
            http.close()
        loadgen.close_clients(conns)

    uvloop.run(run())


async def serve(target: str, **settings: Any) -> tuple[Any, int, int]:
    """Start the target's two apps on free ports: (runners, ws_port, api_port); ``settings``
    override Switchboard's defaults."""
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
                                               api_token=TOKEN, **settings))
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
        "--requests", str(args.requests), "--concurrency", str(args.concurrency),
        "--clients", str(args.clients), env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    bytecodes = BytecodeCounter() if args.bytecodes else None
    totals, cpu, stats = await run_batches(client, profile=not args.cpu, bytecodes=bytecodes)
    for runner in runners:
        await runner.cleanup()
    if args.cpu:
        print(f"cpu_us_per_request={(cpu[2] - cpu[1]) / args.requests * 1e6:.2f}")
        return
    if bytecodes is not None:
        bytecodes.report(args.target, "POST /send_message", args.requests, args.top or 25)
        return
    per_request = (totals[1] - totals[0]) / args.requests
    print(f"{args.target}: {per_request:.1f} Python calls per POST /send_message")
    if args.top and stats is not None:
        print_breakdown(stats, 2 * args.requests, args.top)


class BytecodeCounter:
    """Bytecodes this thread executes, by function, while enabled (``sys.settrace`` with
    per-opcode events). Deterministic like call counts, and closer to the interpreter's work:
    a call to a short function and one to a long one count apart. Tracing slows everything
    about 30x, so what depends on the clock is skewed (``protocol.now_iso`` misses its
    per-millisecond cache far more often than at full speed)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._previous: Any = None

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        where = f"{_package(code.co_filename)}:{code.co_firstlineno}({code.co_name})"
        counts = self.counts

        def count(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[where] = counts.get(where, 0) + 1
            return count

        return count

    def enable(self) -> None:
        self._previous = sys.gettrace()  # a debugger's or coverage's, given back after
        sys.settrace(self._trace)

    def disable(self) -> None:
        sys.settrace(self._previous)

    def report(self, target: str, unit: str, per: int, top: int) -> None:
        """Print the bytecodes per ``unit`` (``per`` of them ran) and the ``top`` functions."""
        total = sum(self.counts.values())
        print(f"{target}: {total / per:.0f} bytecodes per {unit}; the {top} functions "
              "executing most:")
        for where, n in sorted(self.counts.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {n / per:7.1f}  {where}")


async def run_batches(client: asyncio.subprocess.Process, profile: bool = True,
                      bytecodes: BytecodeCounter | None = None,
                      at_batch: Callable[[int], None] | None = None
                      ) -> tuple[list[int], list[float], Any]:
    """Cue a client process through its three batches (warm-up, N, 2N: it prints ``READY``
    before each and waits for a line on stdin, then ``DONE``). Returns cProfile's call totals
    of batches N and 2N (when ``profile``), this process's CPU time in each batch, and the
    last batch's ``pstats.Stats``. With ``bytecodes``, that counter runs over batch N (and
    cProfile does not). ``at_batch(n)`` is called before batch ``n`` starts and, with
    ``n == 3``, after the last one."""
    assert client.stdout is not None and client.stdin is not None
    totals: list[int] = []
    cpu: list[float] = []
    stats = None
    line = (await client.stdout.readline()).decode().strip()
    for batch in range(3):
        if line != "READY":
            raise SystemExit(f"client failed before batch {batch}: {line!r}")
        profiler = cProfile.Profile()
        if batch and profile and bytecodes is None:
            profiler.enable()
        if batch == 1 and bytecodes is not None:
            bytecodes.enable()
        if at_batch is not None:
            at_batch(batch)
        started = time.process_time()
        client.stdin.write(b"go\n")
        await client.stdin.drain()
        line = (await client.stdout.readline()).decode().strip()  # the batch is done
        cpu.append(time.process_time() - started)
        if bytecodes is not None:
            bytecodes.disable()
        elif batch and profile:
            profiler.disable()
            stats = pstats.Stats(profiler)
            totals.append(stats.total_calls)  # type: ignore[attr-defined]
    if at_batch is not None:
        at_batch(3)
    await client.wait()
    return totals, cpu, stats


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


def compare_cpu(args: argparse.Namespace) -> None:
    """``--cpu``: CPU per request of both targets, alternating, in fresh processes."""
    results: dict[str, list[float]] = {"switchboard": [], "bare": []}
    order = ["switchboard", "bare"]
    for round_no in range(args.rounds):
        for target in order:
            out = subprocess.run(
                [sys.executable, "-m", "bench.api_calls", args.checkout, "--target", target,
                 "--cpu-one", "--requests", str(args.requests),
                 "--concurrency", str(args.concurrency), "--clients", str(args.clients)],
                check=True, capture_output=True, text=True,
                env={**os.environ, "PYTHONPATH": args.checkout}).stdout
            value = float(out.rsplit("cpu_us_per_request=", 1)[1])
            results[target].append(value)
            print(f"round {round_no} {target:12s} {value:7.1f} us CPU per request", flush=True)
        order.reverse()
    sb, bare = (statistics.median(results[t]) for t in ("switchboard", "bare"))
    print(f"median: switchboard {sb:.1f} us, bare {bare:.1f} us, ratio {sb / bare:.3f}x "
          f"({args.rounds} rounds, {args.requests} requests, concurrency {args.concurrency}, "
          f"{args.clients} clients)")


def counting_parser(doc: str | None, unit: str) -> argparse.ArgumentParser:
    """The options every per-unit counter here takes (this tool and ``bench.ping_calls``):
    the checkout, ``--target``, ``--top`` and ``--bytecodes``."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--target", choices=("switchboard", "bare"), default="switchboard")
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--bytecodes", action="store_true",
                        help=f"count bytecodes per {unit} by function (BytecodeCounter)")
    return parser


def main() -> None:
    parser = counting_parser(__doc__, "request")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--cpu", action="store_true",
                        help="CPU per request of both targets, alternating (see above)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1,
                        help="WebSocket clients the requests go to in turn")
    parser.add_argument("--cpu-one", dest="cpu_one", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--client", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.checkout))
    if args.client:
        ws_port, api_port = map(int, args.client.split(","))
        client_main(ws_port, api_port, args.requests, args.concurrency, args.clients)
        return
    if args.cpu:
        compare_cpu(args)
        return
    args.cpu = args.cpu_one
    import uvloop

    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
