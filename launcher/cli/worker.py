"""``launcher worker``: a worker pod's entrypoint."""

from __future__ import annotations

import threading
from typing import Any

import click

from .. import logs
from ..observability import HealthServer
from ..signals import install_stop_handlers
from ..worker import WorkerAgent
from .options import GROUP, HEALTH, LOGGING, PARALLELISM, TRITON, apply


def _hidden(group: list[Any]) -> list[Any]:
    """The leader's options, accepted and ignored so one argument list serves both roles."""

    def hide(option: Any) -> Any:
        def decorate(func: Any) -> Any:
            func = option(func)
            func.__click_params__[-1].hidden = True
            return func

        return decorate

    return [hide(o) for o in group]


@click.command()
@apply(HEALTH, LOGGING)
@click.option("--interval", "interval_s", type=float, default=1.0, show_default=True,
              envvar="LAUNCHER_WORKER_INTERVAL", help="Seconds between looks at the pod's processes.")
@apply(_hidden(PARALLELISM), _hidden(TRITON), _hidden(GROUP))
def worker(**params: Any) -> int:
    """Idle until MPI starts ranks here, then watch them; serve health and metrics."""
    logs.setup(params["log_format"], params["verbosity"])
    stop = threading.Event()
    install_stop_handlers(stop)
    agent = WorkerAgent(interval_s=params["interval_s"])
    server = HealthServer(params["health_port"], agent.registry, agent.live, agent.ready).start()
    try:
        agent.run(stop)
    finally:
        server.stop()
    return 0
