"""The README stays true: every setting and every close code is documented there."""

from __future__ import annotations

import re
from pathlib import Path

from server.config import SETTINGS_DOC
from server.errors import CloseCode

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_env_var_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.MULTILINE))
    missing = [s.env for s in SETTINGS_DOC if s.env not in documented]
    assert not missing, f"README configuration table lacks {missing}"


def test_every_close_code_is_documented_with_its_reconnect_advice() -> None:
    for code in CloseCode:
        row = re.search(rf"^\| {int(code)} \| `{code.name}` \| (yes|no) \|", README,
                        flags=re.MULTILINE)
        assert row, f"close code {int(code)} {code.name} missing from the README"
        assert (row.group(1) == "yes") == code.reconnect, code
