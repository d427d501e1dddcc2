"""Logging: -v shows the launcher's debug lines, never the Kubernetes client's bodies or request lines."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from launcher import logs

SECRET = "s3cr3t-in-a-response-body"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("urllib3", "kubernetes")}
    yield
    root.handlers[:], root.level = handlers, level
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_client_debug_records_never_reach_the_log(capfd: pytest.CaptureFixture[str], log_format: str) -> None:
    logs.setup(log_format, verbosity=3)
    # what kubernetes<=30 logs for every answer, and what urllib3 logs for every request
    logging.getLogger("kubernetes.client.rest").debug("response body: %s", SECRET)
    logging.getLogger("urllib3.connectionpool").debug('https://api:443 "GET /api/v1/secrets/%s HTTP/1.1" 200', SECRET)
    logging.getLogger("client").debug("%s", SECRET)
    logging.getLogger("launcher.k8s").debug("pod watch: ADDED w-0-1")
    logging.getLogger("kubernetes.client.rest").warning("retrying")
    err = capfd.readouterr().err
    assert SECRET not in err
    assert "pod watch: ADDED w-0-1" in err and "retrying" in err


def test_a_real_client_request_at_full_verbosity_logs_no_body(capfd: pytest.CaptureFixture[str]) -> None:
    from kubernetes import client

    pod = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w", "annotations": {"x": SECRET}}})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(pod)))
            self.end_headers()
            self.wfile.write(pod.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        logs.setup("text", verbosity=2)
        settings = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        for name in ("urllib3", "kubernetes"):  # as a client configured for debugging sets them
            logging.getLogger(name).setLevel(logging.DEBUG)
        with client.ApiClient(settings) as api:
            found = client.CoreV1Api(api).read_namespaced_pod("w", "ns")
    finally:
        server.shutdown()
        server.server_close()
    assert found.metadata.annotations["x"] == SECRET
    err = capfd.readouterr().err
    assert SECRET not in err and "/api/v1/namespaces/ns/pods/w" not in err, err
