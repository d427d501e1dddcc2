"""``launcher infer``: send one inference and check the answer's shape (the chart's ``helm test``)."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import click

from ..errors import ConfigError, ExitCode, LauncherError
from ..inference import answer_problem, send


@click.command("infer")
@click.option("--url", default="127.0.0.1:8000", show_default=True, metavar="HOST:PORT",
              help="Triton's HTTP endpoint (a Service or rank 0).")
@click.option("--model", required=True, help="Model to ask.")
@click.option("--inputs", required=True, metavar="JSON", help="The request's inputs (KServe v2 JSON list).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds to wait for the answer.")
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to keep retrying while nothing answers (a Service without ready leaders yet).")
def infer(url: str, model: str, inputs: str, timeout: float, wait: float) -> int:
    """Send one inference; exit 0 if the answer is a well-formed list of outputs, else 83."""
    host, port = _endpoint(url)
    _require_json_list(inputs)
    deadline = time.monotonic() + wait
    while True:
        try:
            status, body = send(host, port, model, inputs, timeout)
            break
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline:
                raise LauncherError(f"{url}: no answer from {model} ({exc}); is the release serving?",
                                    ExitCode.NO_ANSWER) from None
            time.sleep(1.0)
    if status != 200:
        raise LauncherError(f"{url}: {model} refused the inference ({status}: "
                            f"{body[:200].decode(errors='replace')})", ExitCode.NO_ANSWER)
    problem = answer_problem(body)
    if problem:
        raise LauncherError(f"{url}: {model}: {problem}", ExitCode.NO_ANSWER)
    outputs = json.loads(body)["outputs"]
    click.echo(f"{model} answered: " + ", ".join(f"{o['name']} {o['datatype']}{o['shape']}" for o in outputs))
    return 0


def _endpoint(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--url={url}: expected HOST:PORT, e.g. my-release-lws-triton-api:8000")
    return host, int(port)


def _require_json_list(inputs: str) -> Any:
    try:
        parsed = json.loads(inputs)
    except ValueError as exc:
        raise ConfigError(f"--inputs: not JSON ({exc}); pass the KServe v2 inputs list") from None
    if not isinstance(parsed, list):
        raise ConfigError("--inputs: expected a JSON list of inputs ([{\"name\": ..., \"datatype\": ..., "
                          "\"shape\": ..., \"data\": ...}])")
    return parsed
