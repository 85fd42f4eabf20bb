"""The systemd unit example (docs/systemd/switchboard.service) is valid and hardened:
``systemd-analyze verify`` accepts it with no warning (pointed at this checkout's
``switchboard`` script, which must exist), and ``systemd-analyze security`` rates it at most
:data:`MAX_EXPOSURE`.

Without systemd-analyze (Debian package ``systemd``) the test is skipped with that reason on a
developer's machine, and fails under CI (``CI`` set), where a skip would go unnoticed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "docs" / "systemd" / "switchboard.service"
INSTALLED = "/opt/switchboard"
#: systemd's exposure score, 0 (locked down) to 10 (exposed); 1.1 when written.
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        reason = ("systemd-analyze not installed (Debian package systemd): the unit example in "
                  "docs/systemd was not checked")
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return tool


def unit_options() -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
    return options


@pytest.fixture
def local_unit(tmp_path: Path) -> Path:
    """The unit with its paths pointed at this checkout (verify checks ExecStart exists)."""
    text = UNIT.read_text(encoding="utf-8")
    text = text.replace(f"{INSTALLED}/.venv/bin/switchboard",
                        str(Path(sys.executable).parent / "switchboard"))
    text = text.replace(f"WorkingDirectory={INSTALLED}", f"WorkingDirectory={ROOT}")
    unit = tmp_path / "switchboard.service"
    unit.write_text(text, encoding="utf-8")
    return unit


def test_systemd_accepts_the_unit_without_a_warning(local_unit: Path) -> None:
    result = subprocess.run([systemd_analyze(), "verify", "--man=no", str(local_unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_systemd_rates_the_unit_hardened(local_unit: Path) -> None:
    result = subprocess.run([systemd_analyze(), "security", "--offline=true", str(local_unit)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for switchboard\.service: ([\d.]+)",
                      result.stdout)
    assert found, result
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_unit_has_the_hardening_and_limits_the_gateway_needs() -> None:
    options = unit_options()
    assert options["ExecStart"] == [f"{INSTALLED}/.venv/bin/switchboard"]
    assert options["DynamicUser"] == ["yes"] and options["NoNewPrivileges"] == ["yes"]
    nofile = int(options["LimitNOFILE"][0])
    assert nofile > Settings().max_connections  # one descriptor per connection, and some
    stop = float(options["TimeoutStopSec"][0])
    assert stop > Settings().shutdown_timeout  # SIGTERM's graceful stop gets its time
    assert options["RestartPreventExitStatus"] == ["2"]  # a config error does not loop
