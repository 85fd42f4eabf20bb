"""What one WebSocket frame's system call costs: one buffer (``write``) or two (``writev``).

    python -m bench.write_cost [--sizes 150,1000,4000,16000] [--rounds 8] [--writes 50000]

A loopback TCP connection (TCP_NODELAY, as aiohttp sets it) whose reader is a forked process
draining it. For each payload size this process writes ``--writes`` frames, alternating each
round between the two ways ``server.ws.Connection.push`` can hand a frame to the kernel:
``write(header + payload)`` (joined in Python, one buffer) and ``writev((header, payload))``
(two buffers, the payload uncopied: what uvloop's ``writelines`` does). It prints the medians
over rounds of this process's CPU per frame (user + system, the join included) and of its
system time alone. The reader runs in its own process, so neither side's Python competes for
the GIL; on loopback the sender's system call also does much of the receiving side's TCP work.
Behind ``ONE_BUFFER_BELOW`` in server/ws.py (docs/BENCHMARKS.md, "One buffer or two").
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics


def cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


def measure(size: int, rounds: int, writes: int) -> dict[str, tuple[float, float]]:
    listener = socket.create_server(("127.0.0.1", 0))
    reader = os.fork()
    if reader == 0:  # the draining peer
        peer = socket.create_connection(listener.getsockname())
        while peer.recv(1 << 20):
            pass
        os._exit(0)
    sock, _ = listener.accept()
    listener.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd = sock.fileno()
    header = b"\x81\x7e" + size.to_bytes(2, "big") if size < 65536 else b"\x81\x7f" + size.to_bytes(8, "big")
    payload = b"x" * size
    samples: dict[str, list[tuple[float, float]]] = {"write": [], "writev": []}
    for n in range(rounds):
        for way in ("write", "writev") if n % 2 else ("writev", "write"):
            total0, sys0 = cpu_seconds()
            if way == "write":
                for _ in range(writes):
                    os.write(fd, header + payload)
            else:
                for _ in range(writes):
                    os.writev(fd, (header, payload))
            total1, sys1 = cpu_seconds()
            samples[way].append(((total1 - total0) / writes * 1e6, (sys1 - sys0) / writes * 1e6))
    sock.close()
    os.waitpid(reader, 0)
    return {way: (statistics.median(s[0] for s in got), statistics.median(s[1] for s in got))
            for way, got in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="150,1000,4000,16000")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--writes", type=int, default=50_000)
    args = parser.parse_args()
    print("payload B | write: CPU µs (sys) | writev: CPU µs (sys) | writev - write, CPU µs")
    for size in (int(s) for s in args.sizes.split(",")):
        got = measure(size, args.rounds, args.writes)
        (w_total, w_sys), (v_total, v_sys) = got["write"], got["writev"]
        print(f"{size:9,} | {w_total:6.2f} ({w_sys:.2f}) | {v_total:6.2f} ({v_sys:.2f}) | "
              f"{v_total - w_total:+.2f}")


if __name__ == "__main__":
    main()
