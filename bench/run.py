"""``make bench``: start each target fresh, drive it with the one load generator, report.

For every scenario, every round and every target (the target order rotates each round),
a fresh server process is started on free loopback ports, the scenario runs against it,
and the process is stopped. Medians over the rounds are compared with the bare aiohttp
server measured in the same run. Output: a table on stdout, ``docs/bench/results.json``
and ``docs/bench/ratios.png``.

    python -m bench.run                      # full run (3 rounds, ~10-20 min)
    python -m bench.run --quick              # smoke run (1 round, small sizes, < 2 min)
    python -m bench.run --targets bare,socketio --scenarios fanout,roundtrip --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench import loadgen
from bench.loadgen import Endpoint, ServerProbe

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs/bench/results.json"
BENCHMARKS_DOC = REPO / "docs/BENCHMARKS.md"
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
#: ``--switchboard-env KEY=VALUE`` settings (diagnosis only: the issue measures defaults).
SWITCHBOARD_EXTRA_ENV: dict[str, str] = {}
#: Settings one scenario needs whatever the target's defaults. Round trips: 50 clients
#: pinging flat out offer ~140 frames/s each, past the default per-connection limit
#: (WS_RATE_LIMIT=100/s, burst 200), which would then measure the policy (50 x 100/s) rather
#: than the gateway. The threshold is raised, not switched off: every frame still goes
#: through the token bucket, so its cost is in the numbers.
SCENARIO_ENV: dict[str, dict[str, str]] = {
    "roundtrip": {"WS_RATE_LIMIT": "1000000", "WS_RATE_BURST": "1000000"},
}
#: Issue 17's targets for Switchboard, as ratios to bare aiohttp's medians in the same run:
#: (scenario, metric, name, limit, higher is better). The checks and the chart's limit lines.
RATIO_TARGETS = (
    ("fanout", "server_cpu_us_per_delivery", "CPU per delivery vs bare", 0.90, False),
    ("paced", "p99_ms", "paced p99 vs bare", 1.0, False),
    ("roundtrip", "rt_per_s", "round trips/s vs bare", 1.0, True),
    ("unicast", "req_per_s", "unicast requests/s vs bare", 0.90, True),
    ("unicast", "e2e_p99_ms", "unicast e2e p99 vs bare", 1.1, False),
    ("idle", "rss_per_conn_kb", "idle memory per connection vs bare", 1.0, False),
)
#: Fan-out deliveries/s against python-socketio's, at least.
SOCKETIO_DELIVERIES_MIN = 5.0
ALL_TARGETS = ("switchboard", "bare", "socketio")
ALL_SCENARIOS = ("fanout", "paced", "idle", "roundtrip", "unicast")

FULL: dict[str, dict[str, Any]] = {
    "fanout": {"clients": 1000, "broadcasts": 200},
    "paced": {"clients": 1000, "rate": 10.0, "broadcasts": 100},
    "idle": {"clients": 15000},
    "roundtrip": {"clients": 50, "duration": 5.0},
    "unicast": {"clients": 1000, "concurrency": 16, "duration": 5.0},
}
QUICK: dict[str, dict[str, Any]] = {
    "fanout": {"clients": 200, "broadcasts": 50},
    "paced": {"clients": 200, "rate": 10.0, "broadcasts": 20},
    "idle": {"clients": 2000},
    "roundtrip": {"clients": 50, "duration": 2.0},
    "unicast": {"clients": 200, "concurrency": 16, "duration": 2.0},
}

# (scenario, metric, label, higher_is_better) shown in the table and the chart.
KEY_METRICS: list[tuple[str, str, str, bool]] = [
    ("fanout", "deliveries_per_s", "fan-out deliveries/s", True),
    ("fanout", "server_cpu_us_per_delivery", "fan-out server CPU µs/delivery", False),
    ("paced", "p50_ms", "paced p50 ms", False),
    ("paced", "p99_ms", "paced p99 ms", False),
    ("idle", "rss_per_conn_kb", "idle RSS KB/conn", False),
    ("idle", "connect_rate", "idle connects/s", True),
    ("roundtrip", "rt_per_s", "round trips/s", True),
    ("roundtrip", "p99_ms", "round trip p99 ms", False),
    ("unicast", "req_per_s", "unicast requests/s", True),
    ("unicast", "e2e_p99_ms", "unicast e2e p99 ms", False),
]
# Shown per scenario in the table besides the key metrics (checks of the run itself).
EXTRA_METRICS: dict[str, list[str]] = {
    "fanout": [
        "lost",
        "duplicates",
        "reordered",
        "seq_gaps",
        "gen_cpu_pct",
        "server_cpu_pct",
        "foreign_cpu_pct",
    ],
    "paced": ["lost", "duplicates", "late_sends", "server_cpu_us_per_delivery", "gen_cpu_pct"],
    "idle": ["connected", "rss_after_mb", "gen_cpu_pct"],
    "roundtrip": [
        "server_cpu_us_per_rt",
        "gen_cpu_pct",
        "server_cpu_pct",
        "rate_limited",
        "rt_retries",
    ],
    "unicast": ["lost", "duplicates", "http_errors", "server_cpu_us_per_req", "gen_cpu_pct"],
}
INTEGRITY = (
    "lost",
    "duplicates",
    "reordered",
    "seq_gaps",
    "http_errors",
    "connect_errors",
    "dropped",
    "recipients_short",
)


# ----------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------
@dataclass
class Running:
    name: str
    proc: asyncio.subprocess.Process
    endpoint: Endpoint
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def target_command(
    name: str, ws_port: int, api_port: int, token: str, scenario: str = ""
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if name == "switchboard":
        env.update(
            WS_HOST="127.0.0.1",
            WS_PORT=str(ws_port),
            API_HOST="127.0.0.1",
            API_PORT=str(api_port),
            API_TOKEN=token,
            LOG_LEVEL="WARNING",
            MAX_CONNECTIONS="20000",
        )
        env.update(SCENARIO_ENV.get(scenario, {}))
        env.update(SWITCHBOARD_EXTRA_ENV)
        return [sys.executable, str(REPO / "run_websocket_server.py")], env
    module = {"bare": "bench.bare_server", "socketio": "bench.socketio_server"}[name]
    args = ["--ws-port", str(ws_port), "--api-port", str(api_port), "--token", token]
    return [sys.executable, "-m", module, *args], env


async def start_target(name: str, logdir: Path, tag: str, scenario: str = "") -> Running:
    ws_port, api_port = free_port(), free_port()
    while api_port == ws_port:
        api_port = free_port()
    token = secrets.token_hex(12)
    cmd, env = target_command(name, ws_port, api_port, token, scenario)
    log = logdir / f"{tag}.log"
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=str(REPO),
            env=env,
            stdout=fh,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
    ep = Endpoint(name, ws_port, api_port, token, "socketio" if name == "socketio" else "ws")
    running = Running(name, proc, ep, log)
    try:
        await loadgen.wait_http_ready(ep, lambda: proc.returncode is None, limit_s=30)
    except BaseException:
        await stop_target(running)
        raise
    return running


async def stop_target(running: Running, grace_s: float = 15.0) -> int | None:
    proc = running.proc
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode


async def quiet_gate(max_wait: float, threshold_pct: float = 20.0) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until the rest of the machine uses less than
    ``threshold_pct`` of one core over a 0.5 s sample: other people's work on a 2-core box
    skews every number. Returns (seconds waited, last sample in % of one core)."""
    t0 = time.monotonic()
    while True:
        b0 = loadgen.machine_busy()
        await asyncio.sleep(0.5)  # the sampling interval
        busy_pct = (loadgen.machine_busy() - b0) / 0.5 * 100.0
        waited = time.monotonic() - t0
        if busy_pct < threshold_pct or waited >= max_wait:
            return waited, busy_pct


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------
class Profiler:
    """``py-spy record`` on the server for the measured window of a scenario."""

    def __init__(self, pid: int, out: Path, rate: int) -> None:
        self.cmd = [
            PY_SPY,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output and exits

    def wait(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def run_one(
    name: str,
    scenario: str,
    params: dict[str, Any],
    logdir: Path,
    tag: str,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    running = await start_target(name, logdir, tag, scenario)
    profiler: Profiler | None = None
    try:
        probe = ServerProbe(running.proc.pid)
        if profile_dir is not None:
            profiler = Profiler(running.proc.pid, profile_dir / f"{tag}.txt", 250)
            probe.on_start, probe.on_stop = profiler.start, profiler.stop
        result = await loadgen.SCENARIOS[scenario](running.endpoint, probe, **params)
        result["server_rss_end_mb"] = probe.rss() / 2**20
    finally:
        if profiler is not None:
            profiler.stop()
            await asyncio.to_thread(profiler.wait)
        rc = await stop_target(running)
    result["exit_code"] = rc
    return result


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    targets: list[str] = args.targets
    logdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {t: [] for t in targets} for s in args.scenarios
    }
    failures: list[str] = []
    started = time.monotonic()
    for scenario in args.scenarios:
        params = dict(sizes[scenario])
        if scenario == "idle" and args.idle_clients:
            params["clients"] = args.idle_clients
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
            for name in order:
                tag = f"{scenario}-{rnd}-{name}"
                waited, busy = await quiet_gate(args.quiet_wait)
                if busy >= 20.0:
                    print(
                        f"  note: machine still busy ({busy:.0f}% of a core) before {tag}",
                        flush=True,
                    )
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(args.scenario_timeout):
                        result = await run_one(name, scenario, params, logdir, tag, args.profile)
                except Exception as exc:  # one failed run must not sink the others
                    msg = f"{tag}: {exc!r}"
                    failures.append(msg)
                    print(f"  FAILED {msg}\n{tail(logdir / f'{tag}.log')}", flush=True)
                    continue
                result["round"] = rnd
                result["quiet_wait_s"] = round(waited, 1)
                result["busy_before_pct"] = round(busy, 1)
                raw[scenario][name].append(result)
                print(
                    f"  {tag:<28} {time.monotonic() - t0:5.1f}s  {brief(scenario, result)}",
                    flush=True,
                )
    return {
        "raw": raw,
        "failures": failures,
        "logdir": str(logdir),
        "wall_s": round(time.monotonic() - started, 1),
        "sizes": {s: sizes[s] for s in args.scenarios},
    }


def brief(scenario: str, r: dict[str, Any]) -> str:
    keys = [m for s, m, _, _ in KEY_METRICS if s == scenario] + EXTRA_METRICS[scenario][:3]
    return "  ".join(f"{k}={fmt(r.get(k))}" for k in keys)


def fmt(v: object) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return "-" if v is None else str(v)


# ----------------------------------------------------------------------------------------
# Summary: medians, ratios, the targets
# ----------------------------------------------------------------------------------------
def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, per_target in raw.items():
        medians[scenario] = {}
        for target, rounds in per_target.items():
            if not rounds:
                continue
            keys = [k for k, v in rounds[0].items() if isinstance(v, int | float)]
            medians[scenario][target] = {
                k: float(statistics.median(r[k] for r in rounds if k in r)) for k in keys
            }
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, metric, _, _ in KEY_METRICS:
        per = medians.get(scenario, {})
        base = per.get("bare", {}).get(metric)
        for target, m in per.items():
            if target == "bare" or not base or metric not in m:
                continue
            ratios.setdefault(target, {}).setdefault(scenario, {})[metric] = m[metric] / base
    integrity: dict[str, int] = {}
    for scenario, per_target in raw.items():
        for target, rounds in per_target.items():
            bad = sum(int(r.get(k, 0) or 0) for r in rounds for k in INTEGRITY)
            integrity[f"{scenario}/{target}"] = bad
    return {"medians": medians, "ratios": ratios, "integrity": integrity}


def check_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue-17 targets for Switchboard (only those whose inputs were measured)."""
    med = summary["medians"]
    ratios = summary["ratios"].get("switchboard", {})
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, higher: bool) -> None:
        if value is None:
            return
        ok = value >= limit if higher else value <= limit
        checks.append(
            {
                "target": name,
                "value": round(value, 3),
                "limit": f"{'>=' if higher else '<='} {limit}",
                "ok": ok,
            }
        )

    for scenario, metric, name, limit, higher in RATIO_TARGETS:
        add(name, ratios.get(scenario, {}).get(metric), limit, higher)
    fan = med.get("fanout", {})
    if "switchboard" in fan and "socketio" in fan and fan["socketio"]["deliveries_per_s"]:
        add(
            "deliveries/s vs python-socketio",
            fan["switchboard"]["deliveries_per_s"] / fan["socketio"]["deliveries_per_s"],
            SOCKETIO_DELIVERIES_MIN,
            True,
        )
    for key, bad in summary["integrity"].items():
        if key.endswith("/switchboard"):
            add(f"{key.split('/')[0]}: lost+dup+errors", float(bad), 0.0, False)
    return checks


def table_rows(summary: dict[str, Any], targets: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each metric's median per target, then each target's ratio to bare."""
    med = summary["medians"]
    ratio_cols = [t for t in targets if t != "bare"] if "bare" in targets else []
    header = ["metric (median of rounds)", *targets, *(f"{t}/bare" for t in ratio_cols)]
    shown: list[tuple[str, str, str]] = [(s, m, label) for s, m, label, _ in KEY_METRICS]
    for scenario, extras in EXTRA_METRICS.items():
        shown.extend((scenario, m, f"{scenario} {m}") for m in extras)
    order = {s: i for i, s in enumerate(ALL_SCENARIOS)}
    shown.sort(key=lambda x: order[x[0]])
    rows: list[list[str]] = []
    for scenario, metric, label in shown:
        per = med.get(scenario)
        if not per:
            continue
        row = [label, *(fmt(per.get(t, {}).get(metric)) for t in targets)]
        base = per.get("bare", {}).get(metric)
        for t in ratio_cols:
            v = per.get(t, {}).get(metric)
            row.append(f"{v / base:.2f}x" if v is not None and base else "-")
        rows.append(row)
    return header, rows


def table(summary: dict[str, Any], targets: list[str]) -> str:
    header, rows = table_rows(summary, targets)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header, *rows]):
        lines.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: the table, the issue's targets and how the run was made."""
    summary = {"medians": result["medians"]}
    header, rows = table_rows(summary, result["targets"])
    out = [
        f"Generated {result['generated_at']} by `{result['command']}` "
        f"({result['mode']}, {result['rounds']} round(s), wall {result['wall_s']} s).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    if result["checks"]:
        out += ["", "| issue-17 target (Switchboard) | value | target | |", "|---|---:|---|---|"]
        out += [
            f"| {c['target']} | {c['value']} | {c['limit']} | {'PASS' if c['ok'] else 'MISS'} |"
            for c in result["checks"]
        ]
    m = result["machine"]
    out += [
        "",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['memory_gb']} GiB, Linux "
        f"{m['kernel']}, {m['implementation']} {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f"; generator loop {result['generator_loop']}, nice {result.get('nice', 0)}.",
    ]
    src = result.get("source") or {}
    if src.get("commit"):
        out.append(
            f"Switchboard at commit `{src['commit'][:12]}`"
            + (" with local changes." if src.get("switchboard_code_modified") else ".")
        )
    if result["failures"]:
        out += ["", "Failed runs: " + "; ".join(result["failures"])]
    return "\n".join(out) + "\n"


def source_state() -> dict[str, Any]:
    """The commit the Switchboard target ran from, and whether its code had local changes."""

    def git(*cmd: str) -> str:
        try:
            out = subprocess.run(
                ["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    dirty = git(
        "status", "--porcelain", "--", "server", "api", "handlers", "run_websocket_server.py"
    )
    return {"commit": git("rev-parse", "HEAD"), "switchboard_code_modified": bool(dirty)}


RESULTS_START = "<!-- results:start (written by python -m bench.run) -->"
RESULTS_END = "<!-- results:end -->"


def update_doc(doc: Path, report: str) -> bool:
    """Replace the text between the results markers of ``doc`` with ``report``."""
    try:
        text = doc.read_text()
    except OSError:
        return False
    start, end = text.find(RESULTS_START), text.find(RESULTS_END)
    if start < 0 or end < start:
        return False
    doc.write_text(text[: start + len(RESULTS_START)] + "\n" + report + text[end:])
    return True


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("aiohttp", "orjson", "python-socketio", "python-engineio", "uvloop", "psutil"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "packages": versions,
    }


def chart(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = summary["ratios"]
    series = [t for t in ("switchboard", "socketio") if t in ratios]
    labels = [
        (s, m, label, hib)
        for s, m, label, hib in KEY_METRICS
        if any(m in ratios[t].get(s, {}) for t in series)
    ]
    if not labels or not series:
        return
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / len(series)
    colors = {"switchboard": "#1f77b4", "socketio": "#d62728"}
    for j, target in enumerate(series):
        xs, ys = [], []
        for i, (s, m, _, _) in enumerate(labels):
            v = ratios[target].get(s, {}).get(m)
            if v:
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                ys.append(v)
        bars = ax.bar(xs, ys, width, label=f"{target} / bare aiohttp", color=colors.get(target))
        for bar, v in zip(bars, ys, strict=True):
            ax.annotate(
                f"{v:.2f}",
                (bar.get_x() + bar.get_width() / 2, v),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.axhline(1.0, color="black", linewidth=0.8)
    limits = {(scenario, metric): limit for scenario, metric, _, limit, _ in RATIO_TARGETS}
    for i, (s, m, _, _) in enumerate(labels):
        if (s, m) in limits:
            ax.plot(
                [i - 0.45, i + 0.45],
                [limits[(s, m)]] * 2,
                color="green",
                linestyle="--",
                linewidth=1.2,
            )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(
        [f"{label}\n({'higher' if hib else 'lower'} is better)" for _, _, label, hib in labels],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_yscale("log")
    ax.set_ylabel("ratio to bare aiohttp (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, small sizes")
    p.add_argument("--rounds", type=int, help="rounds per target (default 3, quick 1)")
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma-separated subset of " + ",".join(ALL_TARGETS),
    )
    p.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help="comma-separated subset of " + ",".join(ALL_SCENARIOS),
    )
    p.add_argument("--idle-clients", type=int, default=0, help="override the idle scenario size")
    p.add_argument(
        "--scenario-timeout",
        type=float,
        default=300.0,
        help="seconds one scenario run may take before it is abandoned",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="max seconds to wait for the machine to be idle before each run (default 90, quick 2)",
    )
    p.add_argument(
        "--switchboard-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the Switchboard target, e.g. WS_RATE_LIMIT=0 (diagnosis; "
        "the issue's comparison uses the defaults)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling niceness for the generator and the servers it starts (e.g. -10 as "
        "root, to keep other work on a shared machine from skewing the numbers)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each run's server with py-spy into DIR/<scenario>-<round>-<target>.txt "
        "(summarise with python -m bench.profile; profiled numbers are not results)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default docs/bench/results.json; quick: a temp file)",
    )
    p.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="chart PNG (default docs/bench/ratios.png; quick: a temp file)",
    )
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for t in args.targets:
        if t not in ALL_TARGETS:
            p.error(f"unknown target {t!r}")
    for s in args.scenarios:
        if s not in ALL_SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    for item in args.switchboard_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--switchboard-env wants KEY=VALUE, not {item!r}")
        SWITCHBOARD_EXTRA_ENV[key] = value
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.quiet_wait is None:
        args.quiet_wait = 2.0 if args.quick else 90.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    tmp = Path(tempfile.gettempdir())
    if args.out is None:
        args.out = tmp / "switchboard-bench-quick.json" if args.quick else DEFAULT_OUT
    if args.chart is None:
        args.chart = (
            tmp / "switchboard-bench-quick.png" if args.quick else REPO / "docs/bench/ratios.png"
        )
    return args


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children inherit it
        except OSError as exc:
            print(f"cannot set niceness {args.nice}: {exc}", file=sys.stderr)
            return 2
    nofile = raise_nofile()
    if "idle" in args.scenarios:
        need = (args.idle_clients or (QUICK if args.quick else FULL)["idle"]["clients"]) + 200
        if nofile < need:
            print(f"RLIMIT_NOFILE is {nofile}; the idle scenario needs {need}", file=sys.stderr)
            return 2
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
        loop_name = "uvloop"
    except ImportError:
        loop_factory = asyncio.new_event_loop
        loop_name = "asyncio"
    print(
        f"bench: targets={','.join(args.targets)} scenarios={','.join(args.scenarios)} "
        f"rounds={args.rounds} {'quick' if args.quick else 'full'} generator loop={loop_name}",
        flush=True,
    )
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        run = runner.run(run_all(args))
    summary = summarize(run["raw"])
    checks = check_targets(summary)
    print()
    print(table(summary, args.targets))
    if checks:
        print("\nissue-17 targets (Switchboard):")
        for c in checks:
            print(
                f"  [{'PASS' if c['ok'] else 'MISS'}] {c['target']:<36} {c['value']:>10} "
                f"(target {c['limit']})"
            )
    if run["failures"]:
        print("\nfailed runs:\n  " + "\n  ".join(run["failures"]))
    result = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "mode": "quick" if args.quick else "full",
        "rounds": args.rounds,
        "targets": args.targets,
        "scenarios": args.scenarios,
        "generator_loop": loop_name,
        "switchboard_extra_env": SWITCHBOARD_EXTRA_ENV,
        "switchboard_scenario_env": SCENARIO_ENV,
        "nice": args.nice,
        "machine": machine_info(),
        "source": source_state(),
        "sizes": run["sizes"],
        "wall_s": run["wall_s"],
        "medians": summary["medians"],
        "ratios_vs_bare": summary["ratios"],
        "integrity_violations": summary["integrity"],
        "checks": checks,
        "failures": run["failures"],
        "rounds_raw": run["raw"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    title = (
        f"Switchboard benchmark ratios vs bare aiohttp ({result['mode']}, medians of "
        f"{args.rounds} round(s)); dashed green = issue-17 limits"
    )
    chart(summary, args.chart, title)
    report = markdown(result)
    args.out.with_suffix(".md").write_text(report)
    if args.out == DEFAULT_OUT and update_doc(BENCHMARKS_DOC, report):
        print(f"updated the results section of {BENCHMARKS_DOC}")
    print(
        f"\nresults: {args.out} (+ .md)\nchart:   {args.chart}\nserver logs: {run['logdir']}"
        f"\nwall time: {run['wall_s']}s"
    )
    return 1 if run["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
