"""Server RSS held for clients that stop reading while large broadcasts are sent, in a checkout.

    python -m bench.slow_memory CHECKOUT [--clients 200] [--broadcasts 40] [--payload 65536]

Starts CHECKOUT's gateway as a real process (``run_websocket_server.py``, loopback, free ports),
opens ``--clients`` WebSocket connections with a 4 KB receive buffer that never read a byte,
then sends ``--broadcasts`` broadcasts of about ``--payload`` bytes through ``POST /broadcast``.
Each frame fills the kernel's buffers, then aiohttp's transport buffer, then the connection's
send queue (below the default caps: no 4008). Prints the server's RSS (``/proc/PID/status``)
before the broadcasts and once it is steady after them, and how many clients are still
connected. Loopback only, bounded: at most 500 sockets, 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import socket
import subprocess
import sys
import time

import aiohttp

from bench.loadgen import Endpoint, wait_http_ready

MAX_CLIENTS = 500
DEADLINE = 60.0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def silent_client(port: int, n: int) -> socket.socket:
    """Connect, upgrade, read the handshake and the greeting, then never read again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /?client_id=slow-{n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    got = b""
    while b"connection_established" not in got:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise RuntimeError(f"client {n}: connection closed during the handshake")
        got += chunk
    return sock


async def steady_rss(pid: int, deadline: float) -> int:
    """RSS once it has not changed by more than 1% for a second (or at the deadline)."""
    last = rss_kb(pid)
    since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = rss_kb(pid)
        if abs(now - last) > last // 100:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
    return last


async def measure(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + DEADLINE
    ws_port, api_port = free_port(), free_port()
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "WS_HOST": "127.0.0.1", "WS_PORT": str(ws_port),
           "API_PORT": str(api_port), "API_TOKEN": token, "LOG_LEVEL": "warning",
           "PYTHONPATH": args.checkout}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "run_websocket_server.py", cwd=args.checkout, env=env,
        stdout=subprocess.DEVNULL)
    headers = {"Authorization": f"Bearer {token}"}
    api = f"http://127.0.0.1:{api_port}"
    socks: list[socket.socket] = []
    try:
        await wait_http_ready(Endpoint("switchboard", ws_port, api_port, token),
                              lambda: server.returncode is None,
                              limit_s=max(deadline - time.monotonic(), 1.0))
        async with aiohttp.ClientSession(headers=headers) as http:
            for n in range(args.clients):
                socks.append(await silent_client(ws_port, n))
            before = await steady_rss(server.pid, deadline)
            pad = "x" * max(0, args.payload - 150)
            started = time.monotonic()
            for i in range(args.broadcasts):
                async with http.post(f"{api}/broadcast", json={
                        "message_type": "bench", "data": {"i": i, "pad": pad}}) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
            sent_s = time.monotonic() - started
            after = await steady_rss(server.pid, deadline)
            async with http.get(f"{api}/status") as resp:
                status = await resp.json()
        held = after - before
        print(f"{args.checkout}: clients {args.clients} broadcasts {args.broadcasts} "
              f"payload {args.payload}: RSS before {before / 1024:.1f} MB, after "
              f"{after / 1024:.1f} MB, held {held / 1024:.1f} MB "
              f"({held / args.clients:.0f} KB per client); broadcasts took {sent_s:.2f} s; "
              f"connected {status['connected_clients']}, slow disconnects "
              f"{status.get('total_slow_disconnects')}")
    finally:
        for sock in socks:
            sock.close()
        server.terminate()
        await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--broadcasts", type=int, default=40)
    parser.add_argument("--payload", type=int, default=65536)
    args = parser.parse_args()
    if not 0 < args.clients <= MAX_CLIENTS:
        raise SystemExit(f"--clients: 1..{MAX_CLIENTS}")
    args.checkout = os.path.abspath(args.checkout)
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
