"""``switchboard-client`` / ``python -m switchboard_client``: talk to a Switchboard gateway.

Subcommands::

    listen                      connect and print every frame (Ctrl-C to stop)
    send TYPE [JSON]            send one frame and print the reply
    chat TEXT                   send a chat_message and print the answer
    api status|health|clients|client ID|messages ID|send CLIENT TEXT|
        broadcast TYPE [JSON]|call CLIENT TOOL [JSON]|channels|handlers|disconnect ID

Where the gateway is, first set wins: ``--url``, ``SWITCHBOARD_URL``,
``ws://127.0.0.1:$WS_PORT/``, ``ws://127.0.0.1:9004/`` for the socket; ``--api``,
``SWITCHBOARD_API``, ``http://127.0.0.1:$API_PORT``, ``http://127.0.0.1:9005`` for the API;
``--token`` or ``API_TOKEN``; ``--ws-token``, ``SWITCHBOARD_WS_TOKEN`` or ``WS_AUTH_TOKEN``.
WS_PORT, API_PORT and API_TOKEN are the gateway's own settings, so a shell that started it
reaches it. Frames go to stdout (``--json`` prints them as JSON lines); progress and errors go
to stderr. Exit status: 0 on success, 1 on a connection, API or request error, 2 on bad usage,
130 on Ctrl-C, 141 when stdout closed early (``| head``), as a tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from switchboard_client.api import DEFAULT_API_URL, SwitchboardAPI
from switchboard_client.client import DEFAULT_URL, SwitchboardClient
from switchboard_client.errors import (
    APIConnectionError,
    APIError,
    ConnectError,
    ConnectionClosed,
    RequestError,
    SwitchboardError,
)
from switchboard_client.format import (
    format_event,
    format_frame,
    paint,
    short,
    use_colour,
)
from switchboard_client.protocol import Frame, Lifecycle, describe_close, dumps, new_message_id

PROG = "switchboard-client"
#: The exit status of a Unix tool killed by SIGPIPE (128 + 13), as a shell reports it: what
#: ``switchboard-client … | head -1`` ends with once ``head`` stops reading.
SIGPIPE_STATUS = 128 + signal.SIGPIPE


class UsageError(Exception):
    """Bad command-line input detected after parsing (e.g. invalid JSON argument)."""


class Output:
    """Where and how the CLI prints: frames to ``out``, progress and errors to ``err``."""

    def __init__(self, out: TextIO, err: TextIO, *, json_mode: bool, colour_mode: str) -> None:
        self.out = out
        self.err = err
        self.json = json_mode
        self.colour_out = use_colour(out, colour_mode)
        self.colour_err = use_colour(err, colour_mode)
        #: Set when a reader stopped reading (``| head``): nothing more is printed, and
        #: long-running commands stop.
        self.reader_gone = asyncio.Event()

    def write(self, text: str, stream: TextIO | None = None) -> None:
        """Print one line to ``stream`` (stdout by default); a closed pipe ends all output."""
        if self.reader_gone.is_set():
            return
        target = self.out if stream is None else stream
        try:
            print(text, file=target, flush=True)
        except BrokenPipeError:
            self.reader_gone.set()
            discard_output(target)

    def frame(self, frame: Frame) -> None:
        """Print a server frame (a JSON line in ``--json`` mode)."""
        if self.json:
            self.write(dumps(frame.to_dict()))
        else:
            self.write(format_frame(frame, colour=self.colour_out))

    def interim(self, frame: Frame) -> None:
        """Print a frame that is not the answer (progress, stream chunks) to stderr."""
        self.write(format_frame(frame, colour=self.colour_err), self.err)

    def reply(self, frame: Frame) -> None:
        """Print a reply: one line, plus its data as indented JSON when that line cannot hold it."""
        self.frame(frame)
        if not self.json and len(dumps(frame.data)) > 100:
            self.data(frame.data)

    def data(self, value: Any) -> None:
        """Print a result value: JSON in ``--json`` mode, else indented JSON or plain text."""
        if self.json or not isinstance(value, str):
            opt = 0 if self.json else orjson.OPT_INDENT_2
            text = orjson.dumps(value, option=opt | orjson.OPT_NON_STR_KEYS).decode()
        else:
            text = value
        self.write(text)

    def line(self, text: str) -> None:
        """Print a plain result line to stdout."""
        self.write(text)

    def event(self, text: str, family: str = "connection") -> None:
        """Print a progress line to stderr."""
        self.write(format_event(text, family, colour=self.colour_err), self.err)

    def error(self, text: str) -> None:
        """Print ``switchboard-client: error: <text>`` to stderr (red on a terminal)."""
        self.write(paint(f"{PROG}: error: {text}", "error", self.colour_err), self.err)


def discard_output(stream: TextIO) -> None:
    """Point a stream whose reader is gone at /dev/null, so that nothing (not even the
    interpreter's final flush) writes to the broken pipe again."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


# ---------------------------------------------------------------------- argument parsing


WS_DEFAULT_PORT = 9004
API_DEFAULT_PORT = 9005

WHERE_HELP = f"""\
where the gateway is (the first one set wins):
  WebSocket  --url, $SWITCHBOARD_URL, ws://127.0.0.1:$WS_PORT/, {DEFAULT_URL}
  HTTP API   --api, $SWITCHBOARD_API, http://127.0.0.1:$API_PORT, {DEFAULT_API_URL}
  API token  --token, $API_TOKEN
  WS token   --ws-token, $SWITCHBOARD_WS_TOKEN, $WS_AUTH_TOKEN
WS_PORT, API_PORT and API_TOKEN are the gateway's own settings: a shell that started the
gateway reaches it.

exit status: 0 ok, 1 connection/API/request error, 2 bad usage, 130 Ctrl-C, 141 stdout
closed early (e.g. | head)."""


def _output_options() -> argparse.ArgumentParser:
    """Options of every command, accepted before and after the subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    p.add_argument("--api", default=S, help="HTTP API base URL (see 'where the gateway is')")
    p.add_argument("--token", default=S, help="API bearer token (env API_TOKEN)")
    p.add_argument("--json", action="store_true", default=S, help="print raw JSON lines")
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default=S,
        help="colour output (default auto: on a terminal, unless NO_COLOR is set)",
    )
    p.add_argument("-v", "--verbose", action="store_true", default=S, help="debug logging")
    return p


def _socket_options() -> argparse.ArgumentParser:
    """Options of the WebSocket commands (listen, send, chat)."""
    p = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    p.add_argument("--url", default=S, help="WebSocket URL (see 'where the gateway is')")
    p.add_argument(
        "--ws-token",
        default=S,
        help="WebSocket auth token (env SWITCHBOARD_WS_TOKEN or WS_AUTH_TOKEN)",
    )
    p.add_argument("--client-id", dest="as_client_id", metavar="ID", default=S,
                   help="ask for this client id")
    p.add_argument("--client-type", dest="as_client_type", metavar="TYPE", default=S,
                   help="client_type to announce (default: cli)")
    return p


#: Socket-only options that change what an ``api`` command would mean if accepted there.
SOCKET_ONLY = {"as_client_type": "--client-type", "as_client_id": "--client-id"}


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI's argument parser."""
    output, socket_opts = _output_options(), _socket_options()
    common = [output, socket_opts]
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=common,
        description="Connect to a Switchboard gateway, listen, send frames and use its HTTP API.",
        epilog=WHERE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listen = sub.add_parser("listen", parents=common, help="print every frame until Ctrl-C")
    listen.add_argument(
        "--subscribe", action="append", default=[], metavar="CHANNEL", help="subscribe first"
    )
    listen.add_argument(
        "--echo-tool", action="store_true", help="answer server tool calls to 'echo' with params"
    )
    listen.add_argument(
        "--grant", action="store_true", help="grant tool permission prompts (default: deny)"
    )
    listen.add_argument("--count", type=int, metavar="N", help="exit after N frames")
    listen.add_argument("--no-reconnect", action="store_true", help="exit when the socket drops")

    send = sub.add_parser("send", parents=common, help="send one frame, print the reply")
    send.add_argument("type", help="frame type, e.g. ping, get_status, subscribe")
    send.add_argument("data", nargs="?", default="{}", help="frame data as a JSON object")
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    send.add_argument("--no-wait", action="store_true", help="do not wait for a reply")

    chat = sub.add_parser("chat", parents=common, help="send a chat message, print the answer")
    chat.add_argument("text")
    chat.add_argument("--role", default="user")
    chat.add_argument("--timeout", type=float, default=60.0)

    # The API commands take no socket options: --client-type there is the broadcast's (and
    # the listing's) filter, named as the API field is.
    api_common = [output]
    api = sub.add_parser("api", parents=api_common, help="call the HTTP API")
    asub = api.add_subparsers(dest="api_command", metavar="ACTION", required=True)
    asub.add_parser("status", parents=api_common, help="GET /status")
    asub.add_parser("health", parents=api_common, help="GET /health")
    clients = asub.add_parser("clients", parents=api_common, help="GET /clients")
    clients.add_argument("--limit", type=int)
    clients.add_argument("--offset", type=int)
    clients.add_argument("--client-type", dest="filter_type", metavar="TYPE",
                         help="only clients of this client_type")
    clients.add_argument("--channel", help="only subscribers of this channel")
    one = asub.add_parser("client", parents=api_common, help="GET /clients/ID")
    one.add_argument("client_id")
    msgs = asub.add_parser("messages", parents=api_common, help="GET /clients/ID/messages")
    msgs.add_argument("client_id")
    msgs.add_argument("--after-seq", type=int)
    msgs.add_argument("--before-seq", type=int)
    msgs.add_argument("--limit", type=int)
    asend = asub.add_parser("send", parents=api_common, help="POST /send_message")
    asend.add_argument("client_id")
    asend.add_argument("text")
    asend.add_argument("--type", dest="message_type", help="message_type (default: message)")
    asend.add_argument("--data", help="extra data as a JSON object")
    bcast = asub.add_parser("broadcast", parents=api_common, help="POST /broadcast")
    bcast.add_argument("message_type")
    bcast.add_argument("data", nargs="?", default="{}", help="JSON object")
    bcast.add_argument("--channel", help="only subscribers of this channel")
    bcast.add_argument("--client-type", "--to-type", dest="filter_type", metavar="TYPE",
                       help="only clients of this client_type (--to-type: older spelling)")
    call = asub.add_parser("call", parents=api_common, help="POST /call_tool")
    call.add_argument("client_id")
    call.add_argument("tool_name")
    call.add_argument("params", nargs="?", default="{}", help="JSON object")
    call.add_argument("--timeout", type=float, help="seconds the gateway waits for the client")
    asub.add_parser("channels", parents=api_common, help="GET /channels")
    asub.add_parser("handlers", parents=api_common, help="GET /handlers")
    disc = asub.add_parser("disconnect", parents=api_common, help="DELETE /clients/ID")
    disc.add_argument("client_id")
    return parser


@dataclass(frozen=True)
class Endpoint:
    """A gateway address and where it came from (said when it cannot be reached)."""

    url: str
    origin: str
    #: How to point the CLI elsewhere.
    options: str

    def unreachable(self, error: SwitchboardError) -> str:
        return (f"{error} (address from {self.origin}; is the gateway running? "
                f"set {self.options})")


def _port(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise UsageError(f"{name}: expected a port number, got {raw!r}")
    return int(raw)


def _endpoint(flag_value: str | None, flag: str, url_var: str, port_var: str,
              template: str, default: str, env: Mapping[str, str]) -> Endpoint:
    options = f"{flag}, {url_var} or {port_var}"
    if flag_value:
        return Endpoint(flag_value, flag, options)
    if env.get(url_var):
        return Endpoint(env[url_var], url_var, options)
    port = _port(env, port_var)
    if port is not None:
        return Endpoint(template.format(port=port), f"{port_var}={port}", options)
    return Endpoint(default, "the default", options)


def _settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    api_command = args.command == "api"
    if api_command:
        for dest, flag in SOCKET_ONLY.items():
            if hasattr(args, dest):
                hint = (" (to filter a broadcast: api broadcast TYPE --client-type X)"
                        if dest == "as_client_type" else "")
                raise UsageError(f"{flag} is for the WebSocket commands (listen, send, chat), "
                                 f"not api{hint}")
    # Only the address the command uses is resolved (a bad WS_PORT does not stop `api`).
    return {
        "url": None if api_command else _endpoint(
            getattr(args, "url", None), "--url", "SWITCHBOARD_URL", "WS_PORT",
            "ws://127.0.0.1:{port}/", DEFAULT_URL, env),
        "api": _endpoint(getattr(args, "api", None), "--api", "SWITCHBOARD_API", "API_PORT",
                         "http://127.0.0.1:{port}", DEFAULT_API_URL, env) if api_command
        else None,
        "token": getattr(args, "token", None) or env.get("API_TOKEN") or None,
        "ws_token": getattr(args, "ws_token", None)
        or env.get("SWITCHBOARD_WS_TOKEN")
        or env.get("WS_AUTH_TOKEN")
        or None,
        "client_id": getattr(args, "as_client_id", None),
        "client_type": getattr(args, "as_client_type", None) or "cli",
        "json": getattr(args, "json", False),
        "color": getattr(args, "color", "auto"),
        "verbose": getattr(args, "verbose", False),
    }


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, got {short(value, 40)}")
    return value


# ---------------------------------------------------------------------- commands


def _make_client(cfg: dict[str, Any], **kwargs: Any) -> SwitchboardClient:
    return SwitchboardClient(
        cfg["url"].url,
        client_id=cfg["client_id"],
        client_type=cfg["client_type"],
        token=cfg["ws_token"],
        **kwargs,
    )


def _describe_connected(info: dict[str, Any]) -> str:
    if not info["resumed"]:
        how = "new session"
    elif info["recovered"]:
        behind = (info.get("server_last_seq") or 0) - info["last_seq"]
        how = f"session resumed, {max(behind, 0)} frame(s) to replay"
    else:
        how = "session resumed, history incomplete"
    verb = "reconnected" if info["reconnect"] else "connected"
    return f"{verb} to {info['url']} as {info['client_id']} ({how})"


def _attach_progress(client: SwitchboardClient, out: Output) -> None:
    """Print lifecycle events (connect, drop, reconnect, recovery) to stderr."""

    @client.on(Lifecycle.CONNECTED)
    def _connected(info: dict[str, Any]) -> None:
        out.event(_describe_connected(info))

    @client.on(Lifecycle.DISCONNECTED)
    def _disconnected(info: dict[str, Any]) -> None:
        reason = f" ({info['reason']})" if info["reason"] else ""
        then = "will reconnect" if info["will_reconnect"] else "not reconnecting"
        family = "connection" if info["will_reconnect"] else "error"
        out.event(f"disconnected: {info['description']}{reason}; {then}", family)

    @client.on(Lifecycle.RECONNECTING)
    def _reconnecting(info: dict[str, Any]) -> None:
        why = f" after: {info['error']}" if info["error"] else ""
        when = f"in {info['delay']:.1f} s" if info["delay"] >= 0.05 else "now"
        out.event(f"reconnecting {when} (attempt {info['attempt']}){why}")

    @client.on(Lifecycle.RECOVERY_FAILED)
    def _lost(info: dict[str, Any]) -> None:
        what = (
            "the gateway's history no longer reaches back to seq "
            f"{info['last_seq']}: some frames were lost, reload state"
            if info["reason"] == "history_gap"
            else "the session was gone; started a new one: earlier frames are lost"
        )
        out.event(f"recovery failed: {what}", "error")

    @client.on(Lifecycle.SESSION_RESET)
    def _reset(info: dict[str, Any]) -> None:
        out.event(
            f"session token rejected ({describe_close(info['code'])}): starting fresh", "error"
        )


async def cmd_listen(args: argparse.Namespace, cfg: dict[str, Any], out: Output) -> int:
    """Connect and print frames until Ctrl-C, ``--count`` frames, or a final close."""
    client = _make_client(cfg, reconnect=not args.no_reconnect)
    _attach_progress(client, out)
    seen = 0
    done = asyncio.Event()

    @client.on("*")
    def _print(frame: Frame) -> None:
        nonlocal seen
        if frame.type == "connection_established":
            if out.json:
                out.frame(frame)
            return  # else the "connected ..." progress line says it already; never counted
        out.frame(frame)
        seen += 1
        if args.count is not None and seen >= args.count:
            done.set()

    if args.echo_tool:

        @client.tool("echo")
        def _echo(**params: Any) -> Any:
            return params

    if args.grant:
        client.on_permission(lambda frame: True)

    out.event(f"connecting to {cfg['url'].url} …")
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        # SIGTERM (and SIGINT where the shell left it ignored) ends listening cleanly.
        loop.add_signal_handler(signal.SIGTERM, done.set)
    async with client:
        for channel in args.subscribe:
            await client.subscribe(channel)
        waits = {asyncio.ensure_future(client.wait_closed()),
                 asyncio.ensure_future(done.wait()),
                 asyncio.ensure_future(out.reader_gone.wait())}  # `| head -N` has its lines
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if client.closed:
            code, reason = client.close_code, client.close_reason
            out.event(f"closed: {reason or describe_close(code)}", "error")
            return 0 if code in (1000, 4001) else 1
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.remove_signal_handler(signal.SIGTERM)
    return 0


async def cmd_send(args: argparse.Namespace, cfg: dict[str, Any], out: Output) -> int:
    """Send one frame; print the reply (or the message_id with ``--no-wait``)."""
    data = _json_object(args.data, "data")
    async with _make_client(cfg, reconnect=False) as client:
        if args.no_wait:
            message_id = await client.send(args.type, data)
            out.line(message_id)
            return 0
        try:
            reply = await client.request(args.type, data, timeout=args.timeout)
        except RequestError as exc:
            out.frame(exc.frame) if exc.frame is not None else out.error(str(exc))
            return 1
        out.reply(reply)
    return 0


async def cmd_chat(args: argparse.Namespace, cfg: dict[str, Any], out: Output) -> int:
    """Send a chat message; stream interim frames to stderr, the answer to stdout."""
    message_id = new_message_id()
    async with _make_client(cfg, reconnect=False) as client:

        @client.on("*")
        def _interim(frame: Frame) -> None:
            if frame.reply_to == message_id and frame.type not in ("chat_response", "stream_end"):
                out.interim(frame)

        try:
            reply = await client.request(
                "chat_message",
                {"content": args.text, "role": args.role},
                timeout=args.timeout,
                message_id=message_id,
            )
        except RequestError as exc:
            out.error(str(exc))
            return 1
        if out.json:
            out.frame(reply)
        else:
            out.line(str(reply.data.get("content", reply.data.get("full_content", ""))))
    return 0


def _print_status(out: Output, body: Any) -> None:
    if not isinstance(body, dict):
        out.data(body)
        return
    width = max((len(str(k)) for k in body), default=0)
    for key, value in body.items():
        out.line(f"{key:<{width}}  {short(value, 160)}")


def _print_history(out: Output, body: Any, items: list[Any]) -> None:
    """History entries ``{direction, seq, frame}``: server frames ``←``, client frames ``→``."""
    for item in items:
        if not isinstance(item, dict):
            continue
        raw = item.get("frame") if isinstance(item.get("frame"), dict) else item
        arrow = "→" if item.get("direction") == "in" else "←"
        out.line(f"{arrow} {format_frame(Frame.from_raw(raw), colour=out.colour_out)}")
    if isinstance(body, dict) and body.get("has_more"):
        last = next(
            (i.get("seq") for i in reversed(items) if isinstance(i, dict) and i.get("seq")), None
        )
        hint = f": use --after-seq {last}" if last is not None else ""
        out.event(f"more history available{hint}")


def _print_clients(out: Output, body: Any) -> None:
    clients = body.get("clients") if isinstance(body, dict) else None
    if not isinstance(clients, list):
        out.data(body)
        return
    rows = [("CLIENT_ID", "TYPE", "CONNECTED", "MESSAGES", "CHANNELS")]
    for c in clients:
        rows.append(
            (
                str(c.get("client_id", "")),
                str(c.get("client_type", "")),
                "yes" if c.get("connected", True) else "no",
                str(c.get("message_count", "")),
                ",".join(c.get("channels") or []) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.line("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    out.line(f"{body.get('total', len(clients))} client(s)")


async def cmd_api(args: argparse.Namespace, cfg: dict[str, Any], out: Output) -> int:
    """Run one HTTP API call and print its answer readably (or raw with ``--json``)."""
    action = args.api_command
    async with SwitchboardAPI(cfg["api"].url, cfg["token"]) as api:
        if action == "status":
            body = await api.status()
            out.data(body) if out.json else _print_status(out, body)
        elif action == "health":
            body = await api.health()
            out.data(body) if out.json else _print_status(out, body)
        elif action == "clients":
            filters = {"client_type": args.filter_type, "channel": args.channel}
            body = await api.clients(limit=args.limit, offset=args.offset,
                                     **{k: v for k, v in filters.items() if v is not None})
            out.data(body) if out.json else _print_clients(out, body)
        elif action == "client":
            body = await api.client(args.client_id)
            out.data(body) if out.json else _print_status(out, body)
        elif action == "messages":
            body = await api.messages(
                args.client_id,
                after_seq=args.after_seq,
                before_seq=args.before_seq,
                limit=args.limit,
            )
            items = body.get("messages") if isinstance(body, dict) else body
            if out.json or not isinstance(items, list):
                out.data(body)
            else:
                _print_history(out, body, items)
        elif action == "send":
            data = _json_object(args.data, "--data") if args.data else None
            body = await api.send_message(
                args.client_id, args.text, message_type=args.message_type, data=data
            )
            if out.json:
                out.data(body)
            else:
                status = body.get("status", "?")
                note = " (client offline: delivered when it resumes)" if status == "queued" else ""
                out.line(
                    f"{status}: message {body.get('message_id')} seq {body.get('seq')} "
                    f"to {args.client_id}{note}"
                )
        elif action == "broadcast":
            data = _json_object(args.data, "data")
            body = await api.broadcast(
                args.message_type, data, channel=args.channel, client_type=args.filter_type
            )
            if out.json:
                out.data(body)
            else:
                out.line(
                    f"broadcast {args.message_type} to {body.get('recipients')} recipient(s) "
                    f"(message {body.get('message_id')})"
                )
        elif action == "call":
            params = _json_object(args.params, "params")
            body = await api.call_tool(args.client_id, args.tool_name, params, timeout=args.timeout)
            ok = isinstance(body, dict) and body.get("success") is not False
            if out.json:
                out.data(body)
            elif ok:
                out.line(paint(f"✅ {args.tool_name} on {args.client_id}:", "tool", out.colour_out))
                out.data(body.get("result"))
            else:
                error = body.get("error") if isinstance(body, dict) else body
                out.line(
                    paint(
                        f"❌ {args.tool_name} on {args.client_id} failed: {short(error, 300)}",
                        "error",
                        out.colour_out,
                    )
                )
            return 0 if ok else 1
        elif action == "channels":
            out.data(await api.channels())
        elif action == "handlers":
            out.data(await api.handlers())
        elif action == "disconnect":
            body = await api.disconnect(args.client_id)
            out.data(body) if out.json else out.line(f"disconnected {args.client_id}")
    return 0


COMMANDS = {"listen": cmd_listen, "send": cmd_send, "chat": cmd_chat, "api": cmd_api}


async def amain(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the CLI inside an existing event loop; returns the exit status (see module doc)."""
    out_stream = stdout or sys.stdout
    err_stream = stderr or sys.stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out_stream), contextlib.redirect_stderr(err_stream):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return int(exc.code or 0)
    out = Output(out_stream, err_stream, json_mode=getattr(args, "json", False),
                 colour_mode=getattr(args, "color", "auto"))
    try:
        cfg = _settings(args)
    except UsageError as exc:
        out.error(str(exc))
        return 2
    if cfg["verbose"]:
        logging.basicConfig(
            level=logging.DEBUG, stream=err_stream, format="%(asctime)s %(name)s %(message)s"
        )
    status = await _run(args, cfg, out)
    return SIGPIPE_STATUS if out.reader_gone.is_set() else status


async def _run(args: argparse.Namespace, cfg: dict[str, Any], out: Output) -> int:
    try:
        return await COMMANDS[args.command](args, cfg, out)
    except UsageError as exc:
        out.error(str(exc))
        return 2
    except APIConnectionError as exc:
        out.error(cfg["api"].unreachable(exc))
        return 1
    except ConnectError as exc:
        unreachable = exc.status is None and exc.close_code is None
        out.error(cfg["url"].unreachable(exc) if unreachable else str(exc))
        return 1
    except APIError as exc:
        out.error(str(exc))
        return 1
    except ConnectionClosed as exc:
        out.error(f"connection closed: {exc.reason or describe_close(exc.code)}")
        return 1
    except SwitchboardError as exc:
        out.error(str(exc))
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: run the CLI and return its exit status."""
    try:
        return asyncio.run(amain(argv))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. --help into `| head -1`
        discard_output(sys.stdout)
        return SIGPIPE_STATUS


if __name__ == "__main__":
    raise SystemExit(main())
