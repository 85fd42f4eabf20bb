"""``make bench`` keeps working: every target and scenario runs at toy sizes and nothing is
lost, duplicated, reordered or refused. No timing is asserted (speed is for ``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_benchmark_scenario_runs_clean_against_every_target() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.selftest"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for target in ("switchboard", "bare", "socketio"):
        for scenario in ("fanout", "paced", "idle", "roundtrip", "unicast"):
            assert f"{scenario}-{target}" in done.stdout, done.stdout
    assert "capacity" in done.stdout, done.stdout
