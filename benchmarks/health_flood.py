"""The health port under idle connections: the launcher's server against the old one, side by side.

    .venv/bin/python -m benchmarks.health_flood [--idle 0,1500] [--requests 50]

For each server and each count of idle connections (opened to the health port and left silent, as a
client that connects and never sends would), GETs /healthz --requests times one after the other and
prints the latency (median, max; a request failing or taking over 1 s, as a kubelet probe's default
timeout, counts as failed) and the process's thread count meanwhile. Run it under a pid limit (a
pids cgroup, as a container has) to see what the old server's threads cost. "new" is
launcher.observability.HealthServer (one selector thread, connections capped and timed out); "old"
is the ThreadingHTTPServer it replaced (a thread per connection, no timeout), kept here only.
"""

from __future__ import annotations

import argparse
import platform
import resource
import socket
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from launcher.observability import HealthServer, LeaderMetrics


class OldHealthServer:
    """The server before this change, reduced to /healthz: a thread per connection, no timeout."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                body = b"alive\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def new_server() -> HealthServer:
    return HealthServer(0, LeaderMetrics().registry, lambda: (True, "alive"), lambda: (True, "ready"),
                        host="127.0.0.1").start()


def latency_s(port: int) -> float | None:
    """Seconds to a 200 from /healthz; None when it failed (as a kubelet probe would)."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            if response.read() != b"alive\n":
                return None
    except OSError:
        return None
    return time.perf_counter() - started


def measure(make: Callable[[], OldHealthServer | HealthServer], idle: int, requests: int) -> str:
    """A table row's cells: median, max, failed requests and threads, with ``idle`` silent connections."""
    server = make()
    sockets = open_idle(server.port, idle)
    try:
        time.sleep(1.0)  # every connection accepted (and, for the old server, its thread started)
        results = [latency_s(server.port) for _ in range(requests)]
        threads = threading.active_count()
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    times = [t for t in results if t is not None]
    shown = f"{statistics.median(times) * 1000:.2f} ms | {max(times) * 1000:.2f} ms" if times else "- | -"
    return f"{len(sockets)} | {shown} | {len(results) - len(times)} | {threads}"


def open_idle(port: int, count: int) -> list[socket.socket]:
    """Up to ``count`` connections; one a server does not take within 2 s is given up (its backlog is full)."""
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            pass
    return sockets


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", default="0,1500", help="counts of idle connections, comma-separated")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    counts = [int(c) for c in args.idle.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * max(counts) + 256)), hard))
    print(f"Python {platform.python_version()}, {platform.machine()}, /healthz x {args.requests} per row")
    print("| server | idle connections asked | opened | median | max | failed (1 s timeout) | threads |")
    print("|---|---|---|---|---|---|---|")
    for count in counts:
        for name, make in (("new", new_server), ("old", OldHealthServer)):
            print(f"| {name} | {count} | {measure(make, count, args.requests)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
