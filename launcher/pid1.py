"""What the launcher owes the container as its PID 1: reap every orphan, pass signals on.

In a container the entrypoint is PID 1, and the kernel re-parents every orphan
of the container to it: the MPI daemons kubessh starts detached, ranks whose
daemon died, the python backend stubs of a killed tritonserver. PID 1 must
collect their exit status or they stay zombies (and a zombie daemon still
looks alive to anything that checks for it). The launcher's own children
belong to ``subprocess``, which must not lose their status to a blanket
``waitpid(-1)``. So, only when it is PID 1, the launcher forks first: the
parent stays PID 1 and does an init's job alone (reap everything, forward
signals to the child, exit with the child's status), and the child runs the
launcher as it runs anywhere else. When PID 1 exits the kernel kills whatever
is left in the container.
"""

from __future__ import annotations

import os
import signal

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def become_init_if_pid1() -> None:
    """As PID 1: fork; return in the child only, while the parent serves as init until the child ends."""
    if os.getpid() != 1:
        return
    waited = {*FORWARDED, signal.SIGCHLD}
    # blocked before the fork, so that no signal is lost before the parent waits for it
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return
    os._exit(serve_as_init(child, waited))


def serve_as_init(child: int, waited: set[signal.Signals]) -> int:
    """Forward signals to ``child`` and reap every process that ends; return the child's exit code."""
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            os.kill(child, info.si_signo)
            continue
        status = reap(child)
        if status is not None:
            return status


def reap(child: int) -> int | None:
    """Collect every ended process; the exit code of ``child`` if it was among them (128+N for signal N)."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            found = 128 - code if code < 0 else code
