"""``make bench`` keeps working: every target and scenario runs at toy sizes and nothing is
lost, duplicated, reordered or refused. No timing is asserted (speed is for ``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: bench.selftest starts some twenty server processes and a toy capacity run (~15-30 s on an
#: idle 2-core machine); a shared machine can make that several times slower, and a hang must
#: end in this test's own failure, with what the self-test printed, before pytest-timeout's.
SELFTEST_TIMEOUT = 200


@pytest.mark.timeout(SELFTEST_TIMEOUT + 30)
def test_every_benchmark_scenario_runs_clean_against_every_target() -> None:
    try:
        done = subprocess.run([sys.executable, "-m", "bench.selftest"], cwd=REPO,
                              capture_output=True, text=True, timeout=SELFTEST_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        printed = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                          for part in (exc.stdout or "", exc.stderr or ""))
        pytest.fail(f"bench.selftest did not finish in {SELFTEST_TIMEOUT} s; it printed:\n"
                    f"{printed}")
    assert done.returncode == 0, done.stdout + done.stderr
    for target in ("switchboard", "bare", "socketio"):
        for scenario in ("fanout", "paced", "idle", "roundtrip", "unicast"):
            assert f"{scenario}-{target}" in done.stdout, done.stdout
    assert "capacity" in done.stdout, done.stdout
