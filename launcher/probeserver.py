"""The HTTP of the health port: GET requests answered by one thread, every resource bounded.

A thread per connection (``ThreadingHTTPServer``) let idle connections hold a thread each, for ever:
1500 of them meant 1500 threads, and under a pid limit /healthz failed, the kubelet restarted the pod
and LeaderWorkerSet recreated the whole group. Here one selector loop serves every connection:

- a connection has ``timeout_s`` from its accept to deliver its request and take the answer (HTTP/1.0,
  closed after one answer): a client sending slowly (slowloris) is dropped then, however it trickles;
- at most ``max_connections`` are open; one more closes the oldest, which has had the longest to send
  its request, so a fresh probe is never the one turned away;
- the request head is at most ``MAX_REQUEST_BYTES``; callbacks must be quick (they answer from memory).
"""

from __future__ import annotations

import dataclasses
import http
import logging
import selectors
import socket
import time
from collections.abc import Callable

log = logging.getLogger("launcher.health")

Respond = Callable[[str], tuple[int, bytes, str]]  # path -> (status, body, content type)
MAX_REQUEST_BYTES = 8192
ACCEPTS_PER_ROUND = 64  # then the requests already accepted are read


@dataclasses.dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float
    received: bytearray = dataclasses.field(default_factory=bytearray)
    reply: memoryview | None = None  # what is left to send, once answered


class ProbeServer:
    def __init__(self, sock: socket.socket, respond: Respond, *, timeout_s: float = 5.0,
                 max_connections: int = 128) -> None:
        """``sock``: bound, not yet listening."""
        self._listener, self._respond = sock, respond
        self.timeout_s, self.max_connections = timeout_s, max_connections
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        self._wake, self._waker = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._selector.register(self._wake, selectors.EVENT_READ)
        self._open: dict[_Connection, None] = {}  # in accept order, hence in deadline order
        self._stopping = False

    def serve(self) -> None:
        """Until ``stop``."""
        while not self._stopping:
            for key, _ in self._selector.select(self._next_timeout()):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is not self._wake and key.data in self._open:
                    self._progress(key.data)
            self._expire()

    def stop(self) -> None:
        self._stopping = True
        self._waker.send(b"x")

    def close(self) -> None:
        for connection in list(self._open):
            self._close(connection)
        self._selector.close()
        for sock in (self._listener, self._wake, self._waker):
            sock.close()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def _next_timeout(self) -> float | None:
        first = next(iter(self._open), None)
        return None if first is None else max(0.0, first.deadline - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        while self._open and (first := next(iter(self._open))).deadline <= now:
            self._close(first)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of descriptors: make room, or let the next round try again
                log.warning("health port: cannot accept a connection: %s", exc.strerror or exc)
                if not self._open:
                    time.sleep(0.05)
                    return
                self._close(next(iter(self._open)))
                continue
            if len(self._open) >= self.max_connections:
                self._close(next(iter(self._open)))
            sock.setblocking(False)
            connection = _Connection(sock, time.monotonic() + self.timeout_s)
            self._open[connection] = None
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _progress(self, connection: _Connection) -> None:
        try:
            if connection.reply is None:
                self._read(connection)
            if connection.reply is not None:
                self._send(connection)
        except OSError:  # reset by the peer, or the like: nothing to answer
            self._close(connection)

    def _read(self, connection: _Connection) -> None:
        data = connection.sock.recv(4096)
        if not data:
            self._close(connection)
            return
        connection.received += data
        end = connection.received.find(b"\r\n\r\n")
        if end >= 0:
            self._answer(connection, *self._route(bytes(connection.received[:end])))
        elif len(connection.received) > MAX_REQUEST_BYTES:
            self._answer(connection, 431, b"request header too large\n", "text/plain; charset=utf-8")

    def _route(self, head: bytes) -> tuple[int, bytes, str]:
        words = head.split(b"\r\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/"):
            return 400, b"bad request\n", "text/plain; charset=utf-8"
        if words[0] != b"GET":
            return 501, b"unsupported method\n", "text/plain; charset=utf-8"
        path = words[1].decode("latin-1").split("?", 1)[0]
        try:
            return self._respond(path)
        except Exception as exc:  # noqa: BLE001 - one bad answer must not end the health port
            log.warning("health port: answering %s failed: %s", path, exc)
            return 500, b"internal error\n", "text/plain; charset=utf-8"

    def _answer(self, connection: _Connection, code: int, body: bytes, content_type: str) -> None:
        head = (f"HTTP/1.0 {code} {http.HTTPStatus(code).phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        connection.reply = memoryview(head.encode("latin-1") + body)
        self._selector.modify(connection.sock, selectors.EVENT_WRITE, connection)

    def _send(self, connection: _Connection) -> None:
        assert connection.reply is not None
        try:
            sent = connection.sock.send(connection.reply)
        except BlockingIOError:
            return
        connection.reply = connection.reply[sent:]
        if not connection.reply:
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        self._open.pop(connection, None)
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        connection.sock.close()
