"""``launcher local``: the leader path on this machine, with the toy model by default."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .. import logs
from ..leader import Leader
from ..plan import Member
from .options import HEALTH, LOGGING, TRITON, Ranged, apply, build_config

EXAMPLE_REPO = Path(__file__).resolve().parent.parent / "examples" / "model_repository"
EXAMPLE_MODEL = "toy_tp"
EXAMPLE_CANARY = '[{"name": "INPUT", "datatype": "FP32", "shape": [1], "data": [1.0]}]'
MAX_LOCAL_RANKS = 256  # more GPUs than one machine has; each rank is a whole tritonserver


@click.command()
@click.option("--ranks", "-n", envvar="LAUNCHER_RANKS", show_envvar=True,
              type=Ranged(1, MAX_LOCAL_RANKS, "the rank count"), default=2, show_default=True,
              help="tritonserver ranks to start on this machine.")
@apply(TRITON, HEALTH, LOGGING)
def local(**params: Any) -> int:
    """Run the whole leader path on this machine (no Kubernetes, no agent)."""
    logs.setup(params["log_format"], params["verbosity"])
    ctx = click.get_current_context()
    if ctx.get_parameter_source("model_repo") == click.core.ParameterSource.DEFAULT:
        params["model_repo"] = EXAMPLE_REPO
        if ctx.get_parameter_source("model") == click.core.ParameterSource.DEFAULT:
            params["model"] = EXAMPLE_MODEL
            if ctx.get_parameter_source("canary_model") == click.core.ParameterSource.DEFAULT:
                params["canary_model"], params["canary_inputs"] = EXAMPLE_MODEL, EXAMPLE_CANARY
    ranks = params["ranks"]
    config = build_config(params, tp=ranks, pp=1, gpus_per_pod=ranks)

    def discover(_stop: threading.Event) -> Sequence[Member]:
        return [Member("localhost", "127.0.0.1", 0)]

    # Ranks (and the python backend's stub) must find this interpreter's
    # packages, whatever the MPI daemon does to PATH.
    environ = dict(os.environ)
    environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
    # On a terminal, a live bar shows the startup progress instead of its log lines.
    live_bar = sys.stderr.isatty() and params["log_format"] == "text"
    return Leader(config, discover, agent=None, environ=environ, live_bar=live_bar).run()
