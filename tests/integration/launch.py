"""Start real launches for integration tests and benchmarks, and find what they left."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import REPO, VENV_BIN, free_port

TOY_REPO = REPO / "launcher" / "examples" / "model_repository"


@dataclasses.dataclass
class Ports:
    http: int
    grpc: int
    metrics: int
    health: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port())

    def flags(self) -> list[str]:
        return [f"--http-port={self.http}", f"--grpc-port={self.grpc}", f"--metrics-port={self.metrics}",
                f"--health-port={self.health}"]


def private_repo(tmp: Path) -> Path:
    """A copy of the toy repository: its unique path marks every process of one launch."""
    repo = tmp / "model_repository"
    shutil.copytree(TOY_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def weighted_repo(tmp: Path, ranks: int, size: int, rate: int) -> Path:
    """The toy repository whose ranks each read a ``size``-byte weights file at ``rate`` bytes/s
    while loading (the model's ``rank_weights`` and ``read_rate`` parameters)."""
    repo = private_repo(tmp)
    for rank in range(ranks):
        with open(tmp / f"weights-{rank}.bin", "wb") as f:
            f.truncate(size)
    config = repo / "toy_tp" / "config.pbtxt"
    text = config.read_text()
    for key, value in (("rank_weights", f"{tmp}/weights-{{rank}}.bin"), ("read_rate", str(rate))):
        text = text.replace(f'key: "{key}"\n  value: {{ string_value: "" }}', f'key: "{key}"\n  value: {{ '
                            f'string_value: "{value}" }}')
    assert str(tmp) in text and str(rate) in text
    config.write_text(text)
    return repo


def launch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAUNCHER_", "LWS_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def processes_using(marker: str) -> list[psutil.Process]:
    """Every live process whose command line mentions ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_ready(port: int, proc: subprocess.Popen[bytes] | None, timeout_s: float = 90.0,
               host: str = "127.0.0.1") -> float:
    """Seconds until Triton on ``port`` answers ready; fails if ``proc`` exits first."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"{host}:{port}", connection_timeout=1.0, network_timeout=1.0)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"launch exited with {proc.returncode} before rank 0 was ready")
        try:
            if client.is_server_ready():
                client.close()  # Triton waits for open connections when it stops
                return time.monotonic() - start
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"rank 0 not ready on {host}:{port} after {timeout_s}s")


def wait_launcher_ready(health_port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
    """Until the launcher's own /readyz says ready (its probe may trail ours)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{health_port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"launcher /readyz on {host}:{health_port} not ready after {timeout_s}s")


def infer(port: int, values: list[float], protocol: str = "http", host: str = "127.0.0.1") -> tuple[list[float], int]:
    """Send INPUT to the toy model on rank 0; return (OUTPUT, RANKS)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float32)
    if protocol == "grpc":
        import tritonclient.grpc as client_lib
    else:
        import tritonclient.http as client_lib  # type: ignore[no-redef]
    client = client_lib.InferenceServerClient(f"{host}:{port}")
    tensor = client_lib.InferInput("INPUT", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("toy_tp", [tensor])
    client.close()
    return result.as_numpy("OUTPUT").tolist(), int(result.as_numpy("RANKS")[0])


def expected_output(values: list[float], world: int) -> list[float]:
    return [v * world * (world + 1) / 2 for v in values]


@dataclasses.dataclass
class LocalLaunch:
    proc: subprocess.Popen[bytes]
    ports: Ports
    repo: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def leftovers(self) -> list[psutil.Process]:
        return processes_using(str(self.repo))

    def rank_processes(self) -> list[psutil.Process]:
        return [p for p in self.leftovers() if p.name() == "tritonserver"]


def start_local(tmp: Path, ranks: int, *extra: str, env: dict[str, str] | None = None,
                prefix: list[str] | None = None) -> LocalLaunch:
    ports = Ports.free()
    repo = private_repo(tmp)
    log = tmp / "launcher.log"
    argv = [*(prefix or []), sys.executable, "-m", "launcher", "local", f"--ranks={ranks}", f"--model-repo={repo}",
            "--model=toy_tp",
            *ports.flags(), "--stop-grace-period=5", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or launch_env())
    return LocalLaunch(proc, ports, repo, log)


def kill_leftovers(launch: LocalLaunch) -> None:
    for proc in launch.leftovers():
        try:
            proc.kill()
        except psutil.Error:
            pass
    if launch.proc.poll() is None:
        launch.proc.kill()
        launch.proc.wait()
