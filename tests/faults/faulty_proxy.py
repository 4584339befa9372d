"""An HTTP proxy on 127.0.0.1 in front of the loopback S3 server that disturbs a seeded share of requests.

One request per client connection (the proxy answers with ``Connection: close``). Of the disturbed
requests, some are never forwarded (an S3 ``503 SlowDown`` answer, or a TCP reset: the server never
applies a request whose answer the client did not see); some are forwarded and their answer is cut
off (a GET's body ends halfway with a reset: the client must notice the short body); some are
forwarded and answered slowly (a pause, then the answer in small pieces). Threads only; stopped by
the context manager.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: "
    b"close\r\nContent-Length: %d\r\n\r\n%s"
)
SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce '
    b"your request rate.</Message></Error>"
)


@dataclass
class Counts:
    forwarded: int = 0
    slow_down: int = 0
    reset: int = 0
    truncated: int = 0
    slow: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _read_message(
    conn: socket.socket, data: bytes = b"", head_only_body: bool = False, on_expect=None
) -> tuple[bytes, bytes] | None:
    """(head, body) of one HTTP message read from ``conn`` (bodies by Content-Length or chunked)."""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if head_only_body:
        return head, b""
    if on_expect is not None and headers.get(b"expect", b"").lower() == b"100-continue":
        on_expect()
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
    return head, body


def _without(head: bytes, *names: bytes) -> bytes:
    return b"\r\n".join(l for l in head.split(b"\r\n") if l.lower().split(b":", 1)[0].strip() not in names)


def _read_request(conn: socket.socket) -> bytes | None:
    message = _read_message(conn, on_expect=lambda: conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"))
    if message is None:
        return None
    head, body = message
    return _without(head, b"connection", b"expect") + b"\r\nConnection: close\r\n\r\n" + body


def _forward(request: bytes, upstream: tuple[str, int]) -> bytes:
    method = request.split(b" ", 1)[0].upper()
    with socket.create_connection(upstream, timeout=60) as up:
        up.sendall(request)
        message = _read_message(up, head_only_body=method == b"HEAD")
        if message is None:
            raise OSError("upstream closed the connection")
        head, body = message
        status = head.split(b" ", 2)[1] if b" " in head else b""
        if status in (b"204", b"304"):
            body = b""
    return _without(head, b"connection") + b"\r\nConnection: close\r\n\r\n" + body


def _send_slowly(conn: socket.socket, data: bytes, pause: float, piece: int = 4096) -> None:
    time.sleep(pause)
    for start in range(0, len(data), piece):
        conn.sendall(data[start : start + piece])
        time.sleep(0.002)


def _truncatable(request: bytes, response: bytes) -> int | None:
    """Where to cut a GET's answer (halfway through a body of 2+ bytes), or None."""
    if not request.startswith(b"GET "):
        return None
    head, _, body = response.partition(b"\r\n\r\n")
    if len(body) < 2 or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        return None
    return len(head) + 4 + len(body) // 2


@contextmanager
def faulty_proxy(
    upstream_url: str,
    seed: int,
    failure_rate: float = 0.1,
    truncate_rate: float = 0.0,
    slow_rate: float = 0.0,
) -> Iterator[tuple[str, Counts]]:
    """Yields the proxy's endpoint URL and its counts of forwarded and failed requests."""
    host, port = upstream_url.split("://", 1)[1].split(":")
    upstream = (host, int(port))
    rng = random.Random(seed)
    rng_lock = threading.Lock()
    counts = Counts()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stopping = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            try:
                request = _read_request(conn)
                if request is None:
                    return
                with rng_lock:
                    draw = rng.random()
                if draw < failure_rate / 2:
                    with counts.lock:
                        counts.reset += 1
                    # RST on close
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if draw < failure_rate:
                    with counts.lock:
                        counts.slow_down += 1
                    conn.sendall(SLOW_DOWN % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY))
                    return
                response = _forward(request, upstream)
                with counts.lock:
                    counts.forwarded += 1
                cut = _truncatable(request, response)
                if cut is not None and draw < failure_rate + truncate_rate:
                    with counts.lock:
                        counts.truncated += 1
                    conn.sendall(response[:cut])
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if failure_rate + truncate_rate <= draw < failure_rate + truncate_rate + slow_rate:
                    with counts.lock:
                        counts.slow += 1
                    _send_slowly(conn, response, pause=0.05 + (draw % 0.01) * 25)
                    return
                conn.sendall(response)
            except OSError:
                return

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", counts
    finally:
        stopping.set()
        thread.join(10)
        server.close()
