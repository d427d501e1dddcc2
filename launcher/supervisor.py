"""Run mpirun, watch the launch, and end every process of it on any exit.

The loop is deliberately plain: start -> poll (mpirun status, rank 0
readiness, local ranks alive) every interval -> branch -> stop. Whatever ends
the loop (a signal, a timeout, a dead rank, mpirun's own exit, an exception),
``_shutdown`` runs: SIGTERM to mpirun and to every process of this launch, a
grace period, then SIGKILL to mpirun's process group and every survivor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .canary import Canary
from .config import CanaryConfig
from .observability import LeaderPhase
from .outcome import Ended, Outcome
from .plan import LaunchPlan
from .runtime_start import StderrTee

if TYPE_CHECKING:
    import psutil

    from .observability import LeaderMetrics
    from .startup import StartupMetrics, StartupMonitor

log = logging.getLogger("launcher.supervisor")

RANK_PROCESS_NAMES = ("tritonserver",)


def count_ranks(processes: Iterable[psutil.Process]) -> int:
    """Live rank processes among ``processes``. A rank's own fork is no rank: Triton forks before it
    execs each python backend stub, and for that moment the child bears the rank's name (counted, it
    made a launch of 2 ranks look like 3, then like one lost)."""
    import psutil

    named: dict[int, int] = {}  # pid -> parent pid, of the live processes with a rank's name
    for process in processes:
        try:
            if process.name() in RANK_PROCESS_NAMES and process.status() != psutil.STATUS_ZOMBIE:
                named[process.pid] = process.ppid()
        except psutil.Error:
            continue
    return sum(1 for parent in named.values() if parent not in named)


class ReadinessProbe(Protocol):
    """Asks rank 0 whether it is ready; ``close`` drops its connection, since
    Triton waits for open HTTP connections before it exits."""

    def __call__(self) -> bool: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class SupervisorOptions:
    startup_timeout_s: float
    stop_grace_s: float
    local_ranks: int  # ranks of the launch that run on this machine
    probe_interval_s: float = 0.1  # until ready: short, it is added to time-to-ready
    serving_interval_s: float = 1.0
    # Counting the local ranks scans every process (about 4 ms on a small machine): twice a second
    # keeps that near 1 % of a core; mpirun itself ends a launch whose rank dies sooner.
    rank_check_interval_s: float = 0.5
    group_settle_s: float = 0.0  # after mpirun ends on its own, how long a pod change may still explain it
    canary: CanaryConfig = dataclasses.field(default_factory=CanaryConfig)  # off without a model
    canary_port: int = 8000  # rank 0's HTTP port
    drain_delay_s: float = 0.0  # a requested stop while serving: rank 0 keeps taking requests this long,
    drain_timeout_s: float = 30.0  # then those in flight get this long, before the ranks are stopped
    endpoints: tuple[int, ...] = ()  # rank 0's request ports (HTTP, gRPC): closed once drained


def client_connections(ports: tuple[int, ...]) -> int:
    """Established TCP connections to ``ports`` of this network namespace (rank 0's endpoints: the
    launcher shares its pod's network), from /proc/net/tcp and tcp6."""
    wanted = {f"{port:04X}" for port in ports}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "01" and fields[1].rsplit(":", 1)[1] in wanted:  # 01: ESTABLISHED
                count += 1
    return count


def _is_rank0(process: psutil.Process) -> bool:
    import psutil

    try:
        return "--id=rank0" in process.cmdline()
    except psutil.Error:
        return False


@contextlib.contextmanager
def hostfile_written(plan: LaunchPlan) -> Iterator[None]:
    """The plan's hostfile, for as long as its mpirun runs."""
    path = Path(plan.hostfile)
    path.write_text(plan.hostfile_text)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def exit_code_of(returncode: int) -> int:
    """A shell-style code for mpirun's status (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(
        self,
        plan: LaunchPlan,
        options: SupervisorOptions,
        serve: Callable[[], LeaderMetrics],
        rank0_ready: ReadinessProbe,
        stop: threading.Event,
        environ: dict[str, str] | None = None,
        group_changed: Callable[[], Outcome | None] | None = None,
        progress: Callable[[], StartupMonitor] | None = None,
    ) -> None:
        self.plan = plan
        self.start_progress = progress  # made once mpirun runs: its imports are not on the way to starting it
        self.progress: StartupMonitor | None = None  # the load's progress, from mpirun's start until rank 0 is ready
        self.options = options
        self.serve = serve  # the leader's metrics (and health server), once mpirun runs
        self._metrics: LeaderMetrics | None = None
        self._load_metrics: StartupMetrics | None = None
        self.canary: Canary | None = None
        self.rank0_ready = rank0_ready
        self.stop = stop
        self.group_changed = group_changed or (lambda: None)
        self.environ = {**(os.environ if environ is None else environ), **plan.env}
        self.launch_id = plan.env["LAUNCHER_LAUNCH_ID"]
        self.ready = False
        self.all_ranks_alive = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.time_to_ready_s: float | None = None

    def run(self) -> Outcome:
        with hostfile_written(self.plan):
            outcome, tee = self._attempt()
            if tee.runtime_did_not_start and outcome.ended is Ended.MPIRUN_FAILED and not self.stop.is_set():
                log.warning("mpirun's runtime did not start (its message is above): starting mpirun once more")
                outcome, tee = self._attempt()
            return outcome

    def _attempt(self) -> tuple[Outcome, StderrTee]:
        """One mpirun, from its start to the end of every process of it."""
        started = time.monotonic()
        self.proc = subprocess.Popen(self.plan.argv, env=self.environ, start_new_session=True, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        tee = StderrTee(self.proc.stderr).start()
        log.info("mpirun started (pid %d) with %d ranks", self.proc.pid, len(self.plan.ranks))
        outcome = None
        try:
            if self._metrics is None:
                self._metrics = self.serve()
                self.metrics.ranks_expected.set(len(self.plan.ranks))
            self.metrics.phases.enter(LeaderPhase.LAUNCH)
            if self.start_progress is not None:
                self.progress = self.start_progress()
                self.progress.start(self.proc.pid, self._startup_metrics())
            outcome = self._monitor(self.proc, started)
            return outcome, tee
        finally:
            self._shutdown(self.proc, graceful=outcome is not None and outcome.graceful)
            tee.join(1.0)  # its last words come before the launcher's next line

    def _startup_metrics(self) -> StartupMetrics:
        """The load's figures: one set in the registry, whichever mpirun's load they show."""
        if self._load_metrics is None:
            from .startup import StartupMetrics

            self._load_metrics = StartupMetrics(self.metrics.registry)
        return self._load_metrics

    @property
    def metrics(self) -> LeaderMetrics:
        assert self._metrics is not None, "metrics are served once mpirun runs"
        return self._metrics

    def _monitor(self, proc: subprocess.Popen[bytes], started: float) -> Outcome:
        seen_local = 0
        next_probe = next_count = started
        while True:
            changed = self.group_changed()
            if changed is not None:
                return changed
            wedged = self.canary.wedged() if self.canary is not None else None
            if wedged is not None:
                return Outcome(Ended.HUNG, wedged)
            returncode = proc.poll()
            if returncode is not None:
                return self._mpirun_exited(returncode)
            if self.stop.is_set():
                log.info("stop requested: shutting the launch down")
                return Outcome(Ended.STOPPED, "stop requested")
            now = time.monotonic()
            if now >= next_count:
                alive = self._local_ranks(proc)
                next_count = now + self.options.rank_check_interval_s
                seen_local = max(seen_local, alive)
                self.all_ranks_alive = alive == self.options.local_ranks
                self.metrics.ranks_alive.set(len(self.plan.ranks) - (seen_local - alive))
                if seen_local == self.options.local_ranks and alive < seen_local:
                    return Outcome(Ended.RANK_LOST, f"a rank ended: {seen_local - alive} of {seen_local} local "
                                                    "ranks died while mpirun was running (see the rank's log above)")
            if now >= next_probe:
                self._probe(now - started)
                next_probe = now + (self.options.serving_interval_s if self.ready else self.options.probe_interval_s)
            if not self.ready and now - started > self.options.startup_timeout_s:
                return Outcome(Ended.STARTUP_TIMEOUT,
                               f"rank 0 was not ready after {self.options.startup_timeout_s:.0f}s; raise "
                               "--startup-timeout for large engines or read the ranks' logs above")
            self.stop.wait(self.options.probe_interval_s)

    def _probe(self, elapsed: float) -> None:
        ready = self.rank0_ready()
        if ready and self.time_to_ready_s is None:
            self.time_to_ready_s = elapsed
            self.metrics.time_to_ready.set(elapsed)
            self.metrics.phases.enter(LeaderPhase.SERVING)
            if self.progress is not None:
                self.progress.finish()
            log.info("rank 0 ready after %.2fs: serving", elapsed)
            if self.options.canary.model:
                self.canary = Canary(self.options.canary_port, self.options.canary).start()
        elif self.ready and not ready:
            log.warning("rank 0 stopped answering ready")
        self.ready = ready
        self.metrics.rank0_ready.set(1 if ready else 0)

    def _local_ranks(self, proc: subprocess.Popen[bytes]) -> int:
        import psutil

        try:
            return count_ranks(psutil.Process(proc.pid).children(recursive=True))
        except psutil.Error:
            return 0

    def _mpirun_exited(self, returncode: int) -> Outcome:
        self.metrics.mpirun_exit_code.set(returncode)
        if self.stop.is_set():
            log.info("mpirun exited (%d) after the stop request", returncode)
            return Outcome(Ended.STOPPED, "stop requested")
        # A pod going away often ends mpirun (its daemon is lost) a moment before
        # the pod watch tells why: give the watch a moment to name the cause.
        settle = time.monotonic() + self.options.group_settle_s
        while time.monotonic() < settle and not self.stop.wait(0.05):
            changed = self.group_changed()
            if changed is not None:
                return changed
        status = exit_code_of(returncode)
        if returncode == 0 or self.time_to_ready_s is not None:
            # One code for one fault: a rank dying while serving ends mpirun with whatever
            # status that rank's death gave it, or is seen first as a missing local rank.
            return Outcome(Ended.RANK_LOST, f"mpirun exited on its own with status {status}: a rank ended (see its "
                                            "log above); the group must be restarted")
        return Outcome(Ended.MPIRUN_FAILED, f"mpirun exited with status {status} before rank 0 was ready", status)

    def _drain(self) -> None:
        """Unready first; rank 0 keeps taking requests for the drain delay (clients still routed here
        are served), then only rank 0 is asked to stop: Triton refuses new requests and finishes those in
        flight, which need every other rank still running, waiting for its clients' connections to end.
        When none is left (or at the timeout) the drain is over and every rank stops together: rank 0
        cannot unload its model alone (its teardown waits for its peers')."""
        import psutil

        from . import procs

        options = self.options
        log.info("draining: not ready; rank 0 takes requests for %gs more, then those in flight get up to %gs",
                 options.drain_delay_s, options.drain_timeout_s)
        time.sleep(options.drain_delay_s)
        begun = time.monotonic()
        rank0 = [p for p in procs.rank_roots(procs.launch_processes(self.launch_id)) if _is_rank0(p)]
        for p in rank0:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        deadline = begun + options.drain_timeout_s
        while client_connections(options.endpoints) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("drained in %.1fs%s", time.monotonic() - begun, " (timed out)" if time.monotonic() >= deadline else "")

    def _stop_gracefully(self, proc: subprocess.Popen[bytes], launched: list[psutil.Process]) -> list[psutil.Process]:
        """SIGTERM to mpirun and, at the same moment, to the local ranks: Triton
        drains and exits by itself, and mpirun sees its ranks end and aborts
        the remote ones. SIGKILL whatever is left after the grace period."""
        from . import procs

        grace = self.options.stop_grace_s
        begun = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        survivors = procs.terminate(launched, grace, polite=procs.rank_roots(launched))
        try:
            proc.wait(timeout=max(0.0, grace - (time.monotonic() - begun)))
        except subprocess.TimeoutExpired:
            log.warning("mpirun still running after %.1fs: killing its process group", time.monotonic() - begun)
        return survivors

    def _shutdown(self, proc: subprocess.Popen[bytes], graceful: bool) -> None:
        """End every process of the launch: gracefully on request, at once after a failure
        (a broken world cannot finish its collectives, so waiting only delays the restart)."""
        from . import procs

        if self._metrics is not None:
            self.metrics.phases.enter(LeaderPhase.STOPPING)
            self.metrics.rank0_ready.set(0)
        self.rank0_ready.close()
        if self.progress is not None:
            self.progress.close()
        if self.canary is not None:
            self.canary.close()
        begun = time.monotonic()
        if graceful and self.ready:
            self._drain()
        launched = procs.launch_processes(self.launch_id)
        if graceful:
            survivors = self._stop_gracefully(proc, launched)
            procs.kill_process_group(proc.pid)
        else:
            procs.kill_process_group(proc.pid)
            survivors = procs.terminate(launched, 0.0, polite=[])
        proc.wait()
        survivors += procs.sweep(lambda: procs.launch_processes(self.launch_id), grace_s=1.0)
        if self._metrics is not None:
            self.metrics.mpirun_exit_code.set(proc.returncode)
            self.metrics.ranks_alive.set(0)
        if survivors:
            log.error("%d processes of this launch survived SIGKILL: %s", len(survivors),
                      ", ".join(str(p.pid) for p in survivors))
        log.info("launch stopped in %.2fs", time.monotonic() - begun)
