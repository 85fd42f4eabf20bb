"""The README stays true: every setting and every close code is documented there."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from server.config import SETTINGS_DOC, TOKEN_RECIPE, Settings
from server.errors import CloseCode

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_env_var_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.MULTILINE))
    missing = [s.env for s in SETTINGS_DOC if s.env not in documented]
    assert not missing, f"README configuration table lacks {missing}"
    # Each row says what server/config.py's SETTINGS_DOC (and so `switchboard --help`) says.
    for spec in SETTINGS_DOC:
        row = f"| `{spec.env}` | `{spec.default}` | {spec.doc} |"
        assert row in README, f"README's row for {spec.env} should read:\n{row}"


def test_the_tour_makes_an_api_token_the_gateway_accepts_beyond_loopback() -> None:
    tour = README[README.index("## Five-minute tour"):README.index("## Protocol walk-through")]
    recipe = re.search(r"export API_TOKEN=\$\((.+)\)\n", tour)
    assert recipe and recipe.group(1) == TOKEN_RECIPE
    token = subprocess.run(shlex.split(recipe.group(1)), capture_output=True, text=True,
                           check=True).stdout.strip()
    settings = Settings.from_env({"API_TOKEN": token})  # the API follows WS_HOST=0.0.0.0
    assert settings.effective_api_host == "0.0.0.0"
    # No literal token anywhere in the README: placeholders (…) and variables only.
    literals = re.findall(r"API_TOKEN=([^\s$…<(]\S*)", README)
    assert not literals, literals


def test_every_close_code_is_documented_with_its_reconnect_advice() -> None:
    for code in CloseCode:
        row = re.search(rf"^\| {int(code)} \| `{code.name}` \| (yes|no) \|", README,
                        flags=re.MULTILINE)
        assert row, f"close code {int(code)} {code.name} missing from the README"
        assert (row.group(1) == "yes") == code.reconnect, code
