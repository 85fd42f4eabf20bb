"""A seconds-long self-check of the benchmark machinery (no timing assertions).

    python -m bench.selftest [--targets switchboard,bare,socketio] [--no-capacity]

Starts each target with tiny sizes, runs every scenario once and checks what must hold
whatever the machine's speed: every client connected, nothing lost, duplicated, reordered
or seq-gapped, no HTTP error, every round trip answered; then ``bench.capacity --toy`` (a real
redis-server, one and two gateway processes) runs clean. Exit status 0 when all hold, 1
otherwise. Suitable for a test suite (``subprocess.run([sys.executable, "-m",
"bench.selftest"])``): it only uses loopback and every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import run

TINY: dict[str, dict[str, Any]] = {
    "fanout": {"clients": 20, "broadcasts": 10},
    "paced": {"clients": 20, "rate": 50.0, "broadcasts": 10},
    "idle": {"clients": 100},
    "roundtrip": {"clients": 5, "duration": 0.5},
    "unicast": {"clients": 20, "concurrency": 4, "duration": 0.5},
}
REPO = Path(__file__).resolve().parent.parent
MUST_BE_ZERO = (*run.INTEGRITY, "handshake_errors", "rt_unanswered", "server_closes")


async def check(targets: list[str]) -> list[str]:
    problems: list[str] = []
    logdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-selftest-"))
    for name in targets:
        for scenario, params in TINY.items():
            tag = f"{scenario}-{name}"
            try:
                async with asyncio.timeout(60):  # a few seconds each
                    result = await run.run_one(name, scenario, params, logdir, tag)
            except Exception as exc:
                problems.append(f"{tag}: {exc!r}\n{run.tail(logdir / f'{tag}.log')}")
                continue
            bad = {k: result[k] for k in MUST_BE_ZERO if result.get(k)}
            if scenario == "idle" and result.get("connected") != params["clients"]:
                bad["connected"] = result.get("connected")
            if bad:
                problems.append(f"{tag}: {bad}")
            print(f"{tag:<22} {'ok' if not bad else 'FAILED'}", flush=True)
    return problems


async def check_capacity() -> list[str]:
    """``bench.capacity`` at toy sizes: it exits non-zero on any lost or miscounted frame,
    failed resume or Redis that never settles."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.capacity", "--toy", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, cwd=REPO)
    try:
        async with asyncio.timeout(150):  # ~13 s on an idle machine
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ["capacity: timed out"]
    ok = proc.returncode == 0
    print(f"{'capacity':<22} {'ok' if ok else 'FAILED'}", flush=True)
    return [] if ok else [f"capacity: exit {proc.returncode}\n{out.decode()[-3000:]}"]


async def check_all(targets: list[str], capacity: bool) -> list[str]:
    """The scenarios and the capacity run side by side: nothing here is timed, and the
    capacity run (its own processes) is a third of the wall time on its own."""
    if not capacity:
        return await check(targets)
    scenarios, cap = await asyncio.gather(check(targets), check_capacity())
    return scenarios + cap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--targets", default=",".join(run.ALL_TARGETS))
    p.add_argument("--no-capacity", dest="capacity", action="store_false",
                   help="skip the toy run of bench.capacity")
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in run.ALL_TARGETS:
            p.error(f"unknown target {t!r}")
    run.raise_nofile()
    problems = asyncio.run(check_all(targets, args.capacity))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
