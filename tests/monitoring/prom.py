"""A real Prometheus for tests, and promtool.

Both are built from the Go module proxy by cluster/build.sh (pinned there,
cached in .cache/cluster/bin like the control plane). ``Prometheus`` runs one
server per test run the way the control plane's components run: its own data
directory, listening on 127.0.0.1 only at a free port, killed when the test
process dies (PR_SET_PDEATHSIG). Its HTTP API answers ``query``,
``query_range``, ``targets`` and ``rules``.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from cluster.controlplane import BIN
from cluster.sandbox import pdeathsig
from tests.conftest import free_port

PROMETHEUS = BIN / "prometheus"
PROMTOOL = BIN / "promtool"
BUILD_HINT = "run cluster/build.sh, which builds prometheus and promtool from the Go module proxy"


def binary(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def binary_or_skip(path: Path) -> Path:
    """The binary, or skip (fail under CI, where .ci/run builds it first) with what to run."""
    import pytest

    if binary(path) is None:
        message = f"{path.name} not found in {path.parent}: {BUILD_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


class PrometheusError(Exception):
    """The API answered with status "error" (a query that does not parse, say)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type


class Prometheus:
    """One Prometheus server: ``config`` (a prometheus.yml as a dict) and ``rule_groups``
    (the ``groups`` of a rules file), data and logs under ``workdir``."""

    def __init__(self, workdir: Path, config: dict[str, Any], rule_groups: list[dict[str, Any]] | None = None,
                 binary: Path = PROMETHEUS) -> None:
        self.workdir = workdir
        self.binary = binary
        self.config = dict(config)
        self.rule_groups = rule_groups or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = dict(self.config)
        if self.rule_groups:
            rules = self.workdir / "rules.yaml"
            rules.write_text(yaml.safe_dump({"groups": self.rule_groups}, sort_keys=False))
            config["rule_files"] = [str(rules)]
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        return config_file

    def reload(self, config: dict[str, Any], rule_groups: list[dict[str, Any]] | None = None) -> None:
        """Run with this configuration and these rules from now on (SIGHUP: Prometheus rereads both)."""
        assert self.proc is not None and self.proc.poll() is None, "reload a running Prometheus"
        self.config, self.rule_groups = dict(config), rule_groups or []
        self._write_config()
        self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout_s: float = 60.0) -> Prometheus:
        config_file = self._write_config()
        for _ in range(3):  # a free port can be taken between finding it and binding it
            self.port = free_port()
            argv = [str(self.binary), f"--config.file={config_file}", f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"]
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pdeathsig)
            if self._wait_ready(timeout_s):
                return self
            if "address already in use" not in self.log.read_text(errors="replace"):
                break
        self.stop()
        raise RuntimeError(f"prometheus did not start; the end of its log:\n{self.log_tail()}")

    def _wait_ready(self, timeout_s: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # -- the HTTP API ----------------------------------------------------------

    def api(self, path: str, **params: str | float) -> Any:
        """``data`` of a GET /api/v1/<path>; PrometheusError when the answer's status is "error"."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400 bad_data, 422 execution, 503 timeout: a JSON body says why
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(body.get("errorType", "unknown"), body.get("error", str(body)))
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: [{"metric": {...}, "value": [t, "v"]}, ...] (a scalar as one unlabelled sample)."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query: [{"metric": {...}, "values": [[t, "v"], ...]}, ...]."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rule_groups_loaded(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def wait_for(self, expr: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Until ``expr`` returns at least one sample; its result."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


def sample_value(sample: dict[str, Any]) -> float:
    """The float of one instant-query sample ("NaN", "+Inf" included)."""
    return float(sample["value"][1])


def finite(samples: list[dict[str, Any]]) -> bool:
    return bool(samples) and all(math.isfinite(sample_value(s)) for s in samples)
