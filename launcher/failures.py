"""What a failed launch does next, so that a group does not restart in a storm.

LeaderWorkerSet recreates the whole group when a pod restarts, which resets the kubelet's crash-loop
backoff: an error that no restart can fix would recreate the group again and again
(kubernetes-sigs/lws#1048). So, when the leader runs in Kubernetes:

- a *permanent* error (the configuration, the model repository, the engine, a missing binary, the
  fabric found faulty by preflight, RBAC) *parks* the leader: it stays alive and unready, with the
  reason on ``/readyz``, in ``launcher_failed`` and in an Event, until its pods are replaced (a new
  configuration rolls them) or it is stopped;
- a *transient* one (a rank or a pod lost, a timeout) exits at once the first time; when failures
  recur within the window, only after an exponential backoff. The count comes from the Events that
  earlier leaders of this LeaderWorkerSet recorded, so it survives the group's recreation.

Every failure leaves one line (exit code, phase, what happened) in the container's termination log,
which ``kubectl describe pod`` shows, and an Event on the LeaderWorkerSet and on the leader's pod,
which ``kubectl describe lws`` and ``kubectl get events`` show after the pods are gone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from .errors import ExitCode

log = logging.getLogger("launcher")

PERMANENT = frozenset({ExitCode.CONFIG_INVALID, ExitCode.MODEL_REPOSITORY, ExitCode.ENGINE_MISMATCH,
                       ExitCode.MISSING_EXECUTABLE, ExitCode.PREFLIGHT_FAILED, ExitCode.FORBIDDEN})
FAILED = "LaunchFailed"  # the Event reason of every failure
TERMINATION_LOG = Path("/dev/termination-log")


def is_permanent(code: int) -> bool:
    return code in PERMANENT


class FailureLog(Protocol):
    """Where failures are kept across the group's recreations (Events on the LeaderWorkerSet)."""

    def record(self, reason: str, message: str) -> None: ...

    def count(self, reason: str, window_s: float) -> int: ...


def failure_line(code: int, phase: str, message: str) -> str:
    return f"exit {code} in {phase}: {message}"


def write_termination_log(line: str, path: Path = TERMINATION_LOG) -> None:
    """The container's termination message (best effort: only where the kubelet provides the file)."""
    if not path.exists():
        return
    try:
        path.write_text(line[:4000] + "\n")  # the kubelet keeps at most 4096 bytes
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", path, exc)
