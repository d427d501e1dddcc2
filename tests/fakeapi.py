"""A small Kubernetes API server for kubessh's tests, over TLS on a local port: the GET of a pod and the
exec websocket (the RFC 6455 handshake and frames written here, subprotocol v4.channel.k8s.io or v5).

An exec either sends the frames a test scripted (to feed kubessh what a broken or hostile API server
might), or runs the command with the pod's container environment, as a kubelet does, and reports its
status the way a kubelet does: Success, or a Failure with reason NonZeroExitCode and an ExitCode cause.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cluster.pki import CA
from kubessh.server import ApiServer

GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


@dataclass
class FakePod:
    name: str
    uid: str
    group_key: str = "k1"
    env: dict[str, str] = field(default_factory=dict)  # the container's environment, for exec'd commands
    phase: str = "Running"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": self.name, "namespace": "ns1", "uid": self.uid,
                             "labels": {GROUP_KEY: self.group_key}},
                "spec": {"containers": [{"name": "main"}]}, "status": {"phase": self.phase}}


@dataclass
class FakeApi:
    pods: dict[str, FakePod]
    frames: list[bytes] | None = None  # scripted exec answer (channel byte + payload each); None: run it
    protocol: str = "v4.channel.k8s.io"
    hang_s: float = 0.0  # after the frames, keep the stream open this long before closing it
    execs: list[list[str]] = field(default_factory=list)  # the command of every exec received
    endpoint: ApiServer | None = None

    def frame(self, payload: bytes, opcode: int = 0x2) -> bytes:
        """One unmasked, final server frame (RFC 6455, section 5.2)."""
        size = len(payload)
        if size < 126:
            length = bytes([size])
        elif size < 1 << 16:
            length = bytes([126]) + size.to_bytes(2, "big")
        else:
            length = bytes([127]) + size.to_bytes(8, "big")
        return bytes([0x80 | opcode]) + length + payload

    def run(self, pod: FakePod, command: list[str]) -> list[bytes]:
        done = subprocess.run(command, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                              env={"PATH": os.environ["PATH"], **pod.env})
        if done.returncode == 0:
            status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        else:
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NonZeroExitCode",
                      "message": f"command terminated with non-zero exit code: exit status {done.returncode}",
                      "details": {"causes": [{"reason": "ExitCode", "message": str(done.returncode)}]}}
        return [b"\x01" + done.stdout, b"\x02" + done.stderr, b"\x03" + json.dumps(status).encode()]


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            parts = url.path.strip("/").split("/")  # api v1 namespaces NS pods NAME [exec]
            pod = api.pods.get(parts[5]) if len(parts) >= 6 else None
            if pod is None:
                self._json(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
                                 "message": f"pods \"{parts[-1]}\" not found"})
            elif len(parts) == 7 and parts[6] == "exec":
                self._exec(pod, parse_qs(url.query).get("command", []))
            else:
                self._json(200, pod.to_json())

        def _json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _exec(self, pod: FakePod, command: list[str]) -> None:
            key = self.headers["Sec-WebSocket-Key"]
            offered = [p.strip() for p in (self.headers["Sec-WebSocket-Protocol"] or "").split(",")]
            assert api.protocol in offered, offered
            api.execs.append(command)
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
            self.send_header("Sec-WebSocket-Accept", accept)
            self.send_header("Sec-WebSocket-Protocol", api.protocol)
            self.end_headers()
            frames = api.run(pod, command) if api.frames is None else api.frames
            self.wfile.write(b"".join(api.frame(f) for f in frames))
            self.wfile.flush()
            threading.Event().wait(api.hang_s)
            self.wfile.write(api.frame((1000).to_bytes(2, "big"), opcode=0x8))
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serving(tmp_path: Path, api: FakeApi) -> Iterator[FakeApi]:
    """``api`` on a local TLS port with a certificate of its own CA; ``api.endpoint`` reaches it."""
    ca = CA(tmp_path / "pki")
    cert, key = ca.issue("apiserver", "127.0.0.1", hosts=("127.0.0.1",), server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    api.endpoint = ApiServer(url=f"https://127.0.0.1:{server.server_address[1]}", token="t0k",
                             ca_file=str(ca.cert_path), namespace="ns1")
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
