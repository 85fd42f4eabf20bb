"""The Python client against the behaviour scenarios both bundled clients share
(``clients/scenarios.json``; the JS client's ``clients/js/test/scenarios.test.js`` reads the same
file), so the two clients cannot drift: close code → action, backoff bounds, seq dedup, the
resume query, request reply types, what a greeting means."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from switchboard_client.client import Backoff, SwitchboardClient
from switchboard_client.protocol import DEFAULT_REPLY_TYPES, Frame, Lifecycle, close_action

SCENARIOS = json.loads(
    (Path(__file__).resolve().parents[2] / "clients" / "scenarios.json").read_text())


@pytest.mark.parametrize("case", SCENARIOS["close_codes"], ids=lambda c: str(c["code"]))
def test_close_code_action(case: dict[str, Any]) -> None:
    assert close_action(case["code"]).value == case["action"], case["why"]


def _backoff_cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    spec = SCENARIOS["backoff"]
    return ([(spec["options"], c) for c in spec["cases"]]
            + [(spec["half_jitter"]["options"], c) for c in spec["half_jitter"]["cases"]])


@pytest.mark.parametrize("options,case", _backoff_cases())
def test_backoff_delay(options: dict[str, Any], case: dict[str, Any],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    backoff = Backoff(initial=options["initial"], maximum=options["maximum"],
                      factor=options["factor"], jitter=options["jitter"],
                      rate_limited=options.get("rate_limited", 5.0))
    monkeypatch.setattr(random, "random", lambda: case["random"])
    assert backoff.delay(case["attempt"]) == pytest.approx(case["delay"])


@pytest.mark.parametrize("case", SCENARIOS["dedup"], ids=lambda c: c["about"])
async def test_seq_dedup(case: dict[str, Any]) -> None:
    client = SwitchboardClient(last_seq=case["last_seq"])
    delivered: list[int | None] = []
    for n, seq in enumerate(case["incoming"]):
        raw: dict[str, Any] = {"type": "message", "data": {"n": n}, "message_id": f"m{n}"}
        if seq is not None:
            raw["seq"] = seq
        before = client.stats.frames_received
        client._handle(raw)
        if client.stats.frames_received > before:
            delivered.append(seq)
    assert delivered == case["delivered"]
    assert client.last_seq == case["last_seq_after"]
    assert client.stats.duplicates_dropped == case["dropped"]


@pytest.mark.parametrize("case", SCENARIOS["resume_query"], ids=lambda c: c["about"])
def test_resume_query(case: dict[str, Any]) -> None:
    state = case["state"]
    client = SwitchboardClient("ws://gw.invalid:9004/", client_id=state.get("client_id"),
                               client_type=state.get("client_type"),
                               session_token=state.get("session_token"),
                               last_seq=state.get("last_seq", 0))
    assert dict(client._build_url(state.get("token")).query) == case["query"]


def test_reply_types() -> None:
    expected = {k: set(v) for k, v in SCENARIOS["reply_types"].items()}
    assert {k: set(DEFAULT_REPLY_TYPES[k]) for k in expected} == expected


@pytest.mark.parametrize("case", SCENARIOS["greeting"], ids=lambda c: c["about"])
async def test_greeting(case: dict[str, Any]) -> None:
    client = SwitchboardClient(session_token="old" if case["had_session"] else None,
                               last_seq=7 if case["had_session"] else 0)
    client._apply_established(Frame.from_raw({
        "type": "connection_established",
        "data": {"client_id": "c", "session_token": "new", "resumed": case["resumed"],
                 "recovered": case["recovered"], "last_seq": 9}}), reconnect=True)
    events = []
    while not client._queue.empty():
        events.append(client._queue.get_nowait())
    failed = [payload for name, payload in events if name == Lifecycle.RECOVERY_FAILED]
    if case["recovery_failed"] is None:
        assert failed == []
    else:
        assert [f["reason"] for f in failed] == [case["recovery_failed"]]
    # A new session numbers frames from 1 again; a resumed one keeps its place.
    assert client.last_seq == (7 if case["resumed"] else 0)
