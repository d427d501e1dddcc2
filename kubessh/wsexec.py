"""Exec through the API's websocket (channel protocol v5.channel.k8s.io, else v4).

Every frame starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 the
error channel (one metav1.Status when the command ends); v5 adds 255 for
"close this channel", which is how the remote side gets EOF on stdin.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from kubessh import api
from kubessh.errors import Exit, KubesshError, Transient
from kubessh.remote import exit_status
from kubessh.server import ApiServer

if TYPE_CHECKING:
    import websocket

PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255
# A peer gone without a FIN (node lost, NAT state dropped) ends the stream after about 30 s of silence
# instead of never: kubessh would otherwise hold mpirun's launch for good.
KEEPALIVE = {"TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}


def keepalive_options() -> list[tuple[int, int, int]]:
    """SO_KEEPALIVE, and its timing where the platform has the options."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    return options + [(socket.IPPROTO_TCP, getattr(socket, name), value)
                      for name, value in KEEPALIVE.items() if hasattr(socket, name)]


def exec_url(server: ApiServer, namespace: str, pod: str, container: str, argv: Sequence[str],
             stdin: bool) -> str:
    query = [("command", word) for word in argv] + [("container", container)]
    query += [("stdin", "true" if stdin else "false"), ("stdout", "true"), ("stderr", "true")]
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/exec"
    return "wss" + server.url.removeprefix("https") + path + "?" + urlencode(query)


def connect(server: ApiServer, namespace: str, pod: str, url: str, timeout_s: float) -> websocket.WebSocket:
    """The upgraded exec connection. Transient only when the command cannot have started:
    the connection was refused, or the API answered the upgrade with 429/5xx."""
    import websocket

    try:
        return websocket.create_connection(
            url, header=server.headers(), subprotocols=PROTOCOLS, timeout=timeout_s,
            sslopt={"context": server.ssl_context()}, enable_multithread=True, sockopt=keepalive_options(),
            skip_utf8_validation=True, http_no_proxy=["*"])  # like the GET: the API directly, not a pod's proxy
    except websocket.WebSocketBadStatusException as exc:
        raise api.http_error(exc.status_code, exc.resp_body or b"", namespace=namespace, pod=pod,
                             verb="create", resource="pods/exec", user=server.user()) from exc
    except ConnectionRefusedError as exc:
        raise Transient(f"cannot reach the API server at {server.url}: {exc}") from exc
    except (OSError, websocket.WebSocketException) as exc:
        raise KubesshError(f"exec into {pod} failed: {exc}") from exc


class Session:
    """One exec: pumps stdin to the pod and the pod's output here; ``wait`` returns the exit status."""

    def __init__(self, ws: websocket.WebSocket, pod: str) -> None:
        self.ws, self.pod = ws, pod
        self.v5 = ws.getsubprotocol() == PROTOCOLS[0]
        self.status: bytes | None = None  # the error channel's payload

    def wait(self, stdin_fd: int | None, timeout_s: float | None = None) -> int:
        """The exit status; ``timeout_s`` bounds the wait for it (None: as long as the command runs)."""
        if stdin_fd is not None:
            threading.Thread(target=self._pump_stdin, args=(stdin_fd,), daemon=True).start()
        try:
            self._receive(timeout_s)
        finally:
            self.ws.close(timeout=0.5)
        if self.status is None:
            raise KubesshError("the exec stream ended without an exit status (connection lost?)")
        return exit_status(self.status, self.pod)

    def _receive(self, timeout_s: float | None) -> None:
        import websocket

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.ws.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
            try:
                opcode, data = self.ws.recv_data()
            except websocket.WebSocketTimeoutException as exc:
                raise KubesshError(f"no exit status from {self.pod} within {timeout_s:g}s of the exec; giving up "
                                   "(what it started may still run there)", Exit.UNREACHABLE) from exc
            except (websocket.WebSocketConnectionClosedException, OSError):
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if len(data) < 2:
            return
        channel, payload = data[0], data[1:]
        if channel == STDOUT:
            _write_all(1, payload)
        elif channel == STDERR:
            _write_all(2, payload)
        elif channel == ERROR:
            self.status = bytes(payload)

    def _pump_stdin(self, fd: int) -> None:
        try:
            while chunk := _read(fd):
                self.ws.send_binary(bytes([STDIN]) + chunk)
            if self.v5:  # v4 cannot tell the remote side about EOF
                self.ws.send_binary(bytes([CLOSE, STDIN]))
        except Exception:  # the stream ended first: nothing left to feed
            return


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # stdin closed or unreadable: same as EOF
        return b""


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except BrokenPipeError:
        pass
