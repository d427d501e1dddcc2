"""How a launch ended, as a value: the supervisor returns one, and one function maps it to an exit code."""

from __future__ import annotations

import dataclasses
import enum

from .errors import ExitCode, LauncherError


class Ended(enum.Enum):
    STOPPED = "stopped"  # a stop was requested (SIGTERM/SIGINT): every rank was stopped gracefully
    RANK_LOST = "rank lost"  # a rank died, or mpirun ended on its own once rank 0 had been ready
    STARTUP_TIMEOUT = "startup timeout"  # rank 0 was not ready within --startup-timeout
    GROUP_CHANGED = "group changed"  # a worker pod was deleted, replaced, restarted or turned not ready
    FORBIDDEN = "forbidden"  # the API server stopped allowing the group watch (credentials, RBAC)
    MPIRUN_FAILED = "mpirun failed"  # mpirun ended with an error before rank 0 was ready
    HUNG = "hung"  # rank 0 answered no canary in time: a rank is stuck in a collective


CODES = {
    Ended.STOPPED: ExitCode.OK,
    Ended.RANK_LOST: ExitCode.RANK_LOST,
    Ended.STARTUP_TIMEOUT: ExitCode.STARTUP_TIMEOUT,
    Ended.GROUP_CHANGED: ExitCode.GROUP_CHANGED,
    Ended.FORBIDDEN: ExitCode.FORBIDDEN,
    Ended.HUNG: ExitCode.HUNG,
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    ended: Ended
    reason: str
    mpirun_status: int = 0  # MPIRUN_FAILED: mpirun's own status (128+N when killed by signal N)

    @property
    def graceful(self) -> bool:
        """Whether the ranks get their grace period: only on request; a broken world cannot finish its
        collectives, so waiting only delays the restart."""
        return self.ended is Ended.STOPPED


def exit_code(outcome: Outcome) -> int:
    """The launcher's exit status for ``outcome``: mpirun's own when it failed before rank 0 was ready."""
    if outcome.ended is Ended.MPIRUN_FAILED:
        return outcome.mpirun_status
    return int(CODES[outcome.ended])


def finish(outcome: Outcome) -> int:
    """0 for a requested stop; otherwise the one-line error for the user, with its exit code."""
    code = exit_code(outcome)
    if code:
        raise LauncherError(outcome.reason, code)
    return code
