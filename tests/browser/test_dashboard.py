"""The dashboard end to end in a real headless Chromium (Debian's, driven by Playwright).

A live gateway serves the page; the test types the token, sees its own WebSocket client in the
clients table, sends it a message through the form (the client receives it), broadcasts an
MCP event (it appears in the live stream with the MCP colour), calls a tool on the client
(the answer is shown), checks untrusted text stays text, and takes a screenshot (saved to
``docs/dashboard.png`` when that is missing or ``UPDATE_SCREENSHOT=1``). Without ``/usr/bin/chromium`` the test fails and says how to get it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import API_TOKEN, LiveGateway, MakeGateway, WSClient, wait_for
from tests.redis.test_cluster import close_code

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
#: The README's screenshot is rewritten when it is missing or UPDATE_SCREENSHOT=1 (not on
#: every run, which would leave the work tree dirty after each ``make test``).
UPDATE_SCREENSHOT = bool(os.environ.get("UPDATE_SCREENSHOT")) or not SCREENSHOT.exists()
XSS = '<img src=x onerror="window.__pwned=1">'


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's chromium under Playwright. Called in the test body, so a machine without it
    gets a failed test (not an error, not a skip) that says what to do."""
    if not HAVE_CHROMIUM:
        pytest.fail("chromium not installed: run `make browser`", pytrace=False)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def answer_one_tool_call(client: WSClient) -> dict[str, object]:
    call = await client.recv_type("tool_call")
    data = call["data"]
    await client.send("tool_result", {"call_id": data["call_id"],
                                      "result": {"city": data["params"]["city"],
                                                 "forecast": "sunny", "celsius": 21}})
    return data


async def open_dashboard(page: Page, live: LiveGateway) -> None:
    stream_url = f"{live.ws_url}ws?client_type=dashboard"
    await page.goto(f"{live.api_url}/dashboard?ws={quote(stream_url, safe='')}")
    await page.fill("#token", API_TOKEN)
    await page.click("#token-save")
    await expect(page.locator("#api-state")).to_have_text("API ok")
    # With the token the stream reconnects (resuming its session) with an observer ticket.
    await expect(page.locator("#ws-state")).to_have_text(re.compile(r"^connected"))


async def test_dashboard_end_to_end(make_gateway: MakeGateway) -> None:
    async with chromium() as browser:
        await dashboard_end_to_end(await make_gateway(), browser)


async def dashboard_end_to_end(live: LiveGateway, browser: Browser) -> None:
    agent = await live.connect(client_id="agent-coder", client_type="agent")
    await live.connect(client_id="desktop-app", client_type="desktop")
    page = await browser.new_page(viewport={"width": 1440, "height": 1000})
    crashes: list[str] = []
    errors: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    # Without a token the dashboard says so.
    await page.goto(f"{live.api_url}/dashboard?stream=off")
    await expect(page.locator("#banner")).to_contain_text("API token")

    await open_dashboard(page, live)
    errors.clear()  # the 401s of the polls before the token was entered were the point
    row = page.locator('#clients tbody tr[data-client-id="agent-coder"]')
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("connected")
    # The dashboard's own stream connection shows up too, subscribed to tool_activity.
    await expect(page.locator("#channels tbody tr[data-channel='tool_activity']")).to_be_visible()
    # Its greeting is in the stream, coloured as a connection frame (twice: it reconnected
    # with an observer ticket once the token was entered).
    await expect(page.locator(
        '#stream li.family-connection[data-type="connection_established"]').first).to_be_visible()

    # Send a message through the form: the client receives it.
    await row.click()
    await expect(page.locator("#send-client")).to_have_value("agent-coder")
    await expect(page.locator("#drawer")).to_be_visible()  # the client drawer opens too
    await page.keyboard.press("Escape")
    await expect(page.locator("#drawer")).to_be_hidden()
    await page.fill("#send-content", "hello from the dashboard")
    await page.click("#send-submit")
    frame = await agent.recv_type("message")
    assert frame["data"]["content"] == "hello from the dashboard"
    await expect(page.locator("#send-result")).to_contain_text('"delivered"')

    # Broadcast: the frame appears in the live stream with the MCP event colour.
    await page.fill("#broadcast-type", "mcp_event")
    await page.fill("#broadcast-data", json.dumps(
        {"event_type": "service_connected", "service_name": "agent_coder"}))
    await page.click("#broadcast-submit")
    mcp = page.locator('#stream li[data-type="mcp_event"]')
    await expect(mcp).to_have_count(1)
    await expect(mcp).to_have_class("frame family-mcp")
    color = await mcp.evaluate("el => getComputedStyle(el).borderLeftColor")
    assert color == "rgb(147, 51, 234)", color  # purple
    assert (await agent.recv_type("mcp_event"))["data"]["service_name"] == "agent_coder"
    await expect(page.locator("#broadcast-result")).to_contain_text('"recipients"')

    # Call a tool on the client: its answer is shown.
    answering = asyncio.ensure_future(answer_one_tool_call(agent))
    await page.fill("#tool-client", "agent-coder")
    await page.fill("#tool-name", "get_weather")
    await page.fill("#tool-params", '{"city": "Paris"}')
    await page.click("#tool-submit")
    call = await answering
    assert call["tool_name"] == "get_weather" and call["params"] == {"city": "Paris"}
    await expect(page.locator("#tool-result")).to_contain_text('"forecast": "sunny"')
    await expect(page.locator("#tool-result")).to_have_class("result result-ok")
    # ... and the call shows in the live stream (tool_activity), green, with its outcome.
    observed = page.locator('#stream li.family-tool[data-type="mcp_tool_execution_complete"]')
    await expect(observed).to_have_count(1)
    await expect(observed).to_contain_text("sunny")
    await expect(page.locator(
        '#stream li.family-tool[data-type="mcp_tool_execution_start"]')).to_contain_text(
        "get_weather")

    # A tool run by the gateway streams its lifecycle to tool_activity: green frames.
    await agent.send("tool_call", {"tool_name": "echo", "params": {"text": "hi"}})
    await agent.recv_type("tool_response")
    await expect(page.locator(
        '#stream li.family-tool[data-type="mcp_tool_execution_complete"]')).to_have_count(2)
    # Seed 000's other families: handoff orange, errors red.
    for message_type, data in (("handoff_call", {"service_name": "agent_coder",
                                                 "status": "started"}),
                               ("tool_execution", {"tool_name": "generate_code",
                                                   "status": "error", "error": "boom"})):
        status, _ = await live.api("POST", "/broadcast",
                                   {"message_type": message_type, "data": data})
        assert status == 200
    await expect(page.locator('#stream li.family-handoff[data-type="handoff_call"]'))\
        .to_have_count(1)
    await expect(page.locator('#stream li.family-error[data-type="tool_execution"]'))\
        .to_have_count(1)


    # Only local assets were loaded, and nothing went wrong in the page.
    requested = await page.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith((live.api_url, live.ws_url)) for url in requested), requested
    assert not errors, errors
    assert not crashes, crashes

    # The counters catch up with the next poll (three broadcasts so far).
    await expect(page.locator("#c-broadcasts")).to_have_text("3")
    png = await page.screenshot(full_page=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if UPDATE_SCREENSHOT:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(png)

    await client_drawer(page, live, agent)
    await one_session_per_tab(page, live)

    # Untrusted text stays text: in the table and in the stream.
    await live.connect(client_id="intruder", client_type=XSS)
    status, _ = await live.api("POST", "/broadcast",
                               {"message_type": "message", "data": {"content": XSS}})
    assert status == 200
    await expect(page.locator('#stream li[data-type="message"]').first).to_contain_text(XSS)
    await expect(page.locator('#clients tbody tr[data-client-id="intruder"]'))\
        .to_contain_text(XSS)
    assert await page.locator("img").count() == 0
    assert await page.evaluate("window.__pwned") is None
    assert not crashes, crashes
    await page.close()


async def client_drawer(page: Page, live: LiveGateway, agent: WSClient) -> None:
    """A click on a client opens its drawer: details, history paged from
    /clients/{id}/messages, and "end session"."""
    for n in range(60):
        status, _ = await live.api("POST", "/send_message",
                                   {"client_id": "agent-coder", "content": f"note {n}"})
        assert status == 200
    await page.locator('#clients tbody tr[data-client-id="agent-coder"]').click()
    drawer = page.locator("#drawer")
    await expect(drawer).to_be_visible()
    await expect(page.locator("#drawer-client")).to_have_text("agent-coder")
    await expect(page.locator("#drawer-info")).to_contain_text("agent")
    history = page.locator("#drawer-history li")
    await expect(history).to_have_count(50)  # the newest page
    await expect(history.last).to_contain_text("note 59")
    await expect(page.locator("#drawer-older")).to_be_enabled()
    await page.click("#drawer-older")
    await expect(history.first).to_contain_text("hello from the dashboard")
    await expect(page.locator("#drawer-history li[data-seq='1']")).to_have_count(1)
    await page.click("#drawer-newest")
    await expect(history.last).to_contain_text("note 59")

    # End the session: two clicks, the client is closed with 4001 and leaves the table.
    await page.click("#drawer-end")
    await page.click("#drawer-end-confirm")
    await expect(page.locator("#drawer-end-result")).to_contain_text("session ended")
    assert await close_code(agent) == 4001
    await expect(page.locator('#clients tbody tr[data-client-id="agent-coder"]')).to_have_count(0)
    await page.click("#drawer-close")
    await expect(drawer).to_be_hidden()

    # Throughput sparklines are drawn from the counters' deltas.
    await expect(page.locator("#spark-out")).to_have_attribute("data-points", re.compile(r"[1-9]"))
    assert float(await page.locator("#rate-out").text_content() or "x") >= 0


async def dashboard_sessions(live: LiveGateway) -> list[dict[str, object]]:
    status, body = await live.api("GET", "/clients?client_type=dashboard")
    assert status == 200
    return body["clients"]


async def one_session_per_tab(page: Page, live: LiveGateway) -> None:
    """A reload resumes the dashboard's session (none is left behind per page load);
    "Disconnect" ends it."""
    [before] = await dashboard_sessions(live)
    for _ in range(2):
        await page.reload()
        await expect(page.locator("#ws-state")).to_have_text("connected (resumed)")
    [after] = await dashboard_sessions(live)
    assert after["client_id"] == before["client_id"] and after["connected"] is True
    await page.click("#ws-connect")  # Disconnect
    await expect(page.locator("#ws-connect")).to_have_text("Connect")
    # The session is ended, not left behind for SESSION_TTL.
    await wait_for(lambda: not any(s.client_type == "dashboard"
                                   for s in live.gateway.registry.sessions.values()),
                   what="the dashboard's session to end")
    assert await dashboard_sessions(live) == []
    await page.click("#ws-connect")  # and a new session again
    await expect(page.locator("#ws-state")).to_have_text("connected")


async def test_docs_page_renders_the_spec_with_bearer_auth(live_gateway: LiveGateway) -> None:
    async with chromium() as browser:
        await docs_page(live_gateway, browser)


async def docs_page(live_gateway: LiveGateway, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(f"{live_gateway.api_url}/dashboard?stream=off")
    await page.fill("#token", API_TOKEN)
    await page.click("#token-save")
    await page.goto(f"{live_gateway.api_url}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Switchboard")
    await expect(page.locator("#operations-delivery-sendMessage")).to_be_visible()
    # The token from the dashboard pre-fills bearerAuth: the Authorize button shows locked.
    await expect(page.locator(".swagger-ui .auth-wrapper .authorize.locked")).to_be_visible()
    requested = await page.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(live_gateway.api_url) for url in requested), requested
    await page.close()
