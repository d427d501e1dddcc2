"""Finding the group's pods, and waiting until each can be exec'd into.

Two sources of members: a static host list (``launcher local``, ``--hosts``)
or the Kubernetes API. Readiness asks the remote-launch agent itself to run
``true`` in every worker pod, in parallel, so a launch starts only when the
exact path mpirun will take works.
"""

from __future__ import annotations

import concurrent.futures
import logging
import subprocess
import threading
import time
from collections.abc import Sequence

from .errors import ExitCode, LauncherError
from .plan import Member

log = logging.getLogger("launcher.discovery")


def static_members(hosts: Sequence[str]) -> list[Member]:
    """Members from ``pod[=address]`` words, in the given order."""
    members = []
    for index, word in enumerate(hosts):
        pod, _, address = word.partition("=")
        members.append(Member(pod, address or pod, index))
    return members


def _probe_once(agent: str, pod: str, timeout_s: float) -> tuple[bool, str]:
    try:
        done = subprocess.run([agent, pod, "true"], capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout_s:.0f}s"
    except OSError as exc:
        return False, str(exc)
    if done.returncode == 0:
        return True, "ok"
    lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
    return False, (lines[-1] if lines else f"exit status {done.returncode}")


def wait_until_reachable(
    agent: str,
    workers: Sequence[Member],
    timeout_s: float,
    stop: threading.Event,
    interval_s: float = 0.5,
    parallel: int = 16,
) -> None:
    """Return once ``agent <pod> true`` succeeds for every worker, else raise."""
    pending = {m.pod: "not tried" for m in workers}
    deadline = time.monotonic() + timeout_s
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(parallel, len(workers)))) as pool:
        while pending:
            attempt_timeout = max(1.0, min(10.0, deadline - time.monotonic()))
            results = pool.map(lambda pod: (pod, _probe_once(agent, pod, attempt_timeout)), list(pending))
            for pod, (ok, why) in results:
                if ok:
                    del pending[pod]
                else:
                    pending[pod] = why
            reachable = len(workers) - len(pending)
            log.info("readiness: %d/%d workers reachable through %s", reachable, len(workers), agent)
            if not pending:
                return
            if stop.wait(interval_s):
                raise LauncherError("stopped while waiting for workers", ExitCode.INTERRUPTED)
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{pod}: {why}" for pod, why in pending.items())
                raise LauncherError(
                    f"{len(pending)} of {len(workers)} workers not reachable through {agent} after "
                    f"{timeout_s:.0f}s ({detail}); check the pods and the agent's permissions",
                    ExitCode.WORKERS_UNREACHABLE,
                )
