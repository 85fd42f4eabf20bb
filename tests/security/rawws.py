"""A WebSocket client over a raw blocking socket, for tests that must break the rules or
stop reading: it writes any frame (unmasked, any opcode, any close code, split anywhere) and
reads the server's frames only when asked, so a client that "never reads" really leaves its
kernel buffers full. Blocking calls: run them with ``asyncio.to_thread`` from async tests.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from dataclasses import dataclass, field

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The TCP connection ended: ``reset`` when by RST (the server aborted it)."""

    def __init__(self, reset: bool) -> None:
        super().__init__("connection reset" if reset else "connection closed")
        self.reset = reset


@dataclass
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])


def encode_frame(opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True,
                 rsv: int = 0) -> bytes:
    """One frame as a client sends it (masked unless ``mask=False``)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if length < 4096 else (
        (int.from_bytes(payload, "big") ^ int.from_bytes((key * (length // 4 + 1))[:length],
                                                         "big")).to_bytes(length, "big"))
    return head + key + masked


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class RawWebSocket:
    port: int
    path: str = "/"
    rcvbuf: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    #: Frames sent right behind the handshake, in the same write (the "tail").
    early: bytes = b""
    status: int = 0
    response: bytes = b""
    sock: socket.socket = field(init=False)
    buffer: bytes = b""

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.sock.settimeout(self.timeout)
        self.sock.connect(("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in self.headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + self.early)
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(reset=False)
            self.buffer += chunk
        self.response, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status = int(self.response.split(b" ", 2)[1])

    def send(self, opcode: int, payload: bytes, **options: bool | int) -> None:
        self.sock.sendall(encode_frame(opcode, payload, **options))  # type: ignore[arg-type]

    def send_text(self, text: str | bytes) -> None:
        self.send(TEXT, text.encode() if isinstance(text, str) else text)

    def _fill(self, size: int) -> None:
        while len(self.buffer) < size:
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                raise Closed(reset=True) from None
            if not chunk:
                raise Closed(reset=False)
            self.buffer += chunk

    def recv(self) -> Frame:
        """The next server frame (raises Closed when the connection ends first)."""
        self._fill(2)
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        start = 2
        if length == 126:
            self._fill(4)
            length, start = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            self._fill(10)
            length, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
        self._fill(start + length)
        payload = self.buffer[start:start + length]
        self.buffer = self.buffer[start + length:]
        return Frame(opcode, payload)

    def recv_until_close(self) -> tuple[list[Frame], Frame | None]:
        """Read every frame until the server's close frame (returned), or until the
        connection ends without one (None; a reset counts as an end)."""
        frames: list[Frame] = []
        while True:
            try:
                frame = self.recv()
            except Closed:
                return frames, None
            if frame.opcode == CLOSE:
                return frames, frame
            frames.append(frame)

    def close(self) -> None:
        self.sock.close()
