"""The leader path: check, discover, wait for workers, plan, supervise.

Shared by ``launcher leader`` (members from Kubernetes or ``--hosts``) and
``launcher local`` (one machine, no agent). Everything that can be checked
without starting anything is checked first, so a bad configuration leaves
nothing half-started behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .config import LaunchConfig
from .discovery import wait_until_reachable
from .errors import ExitCode, LauncherError, MissingExecutableError
from .failures import FAILED, FailureLog, failure_line, is_permanent, write_termination_log
from .model_repository import check_engine, check_model_repository
from .mpi import detect_mpi
from .observability import LeaderPhase, reserve_port
from .outcome import Outcome, finish
from .plan import ADMIN_KEY_ENV, LaunchPlan, Member, MpiFlavor, TritonCommand, agent_env, build_plan
from .signals import install_stop_handlers
from .supervisor import Supervisor, SupervisorOptions
from .tritonbin import find_tritonserver

if TYPE_CHECKING:
    from .observability import HealthServer, LeaderMetrics
    from .preflight.check import PreflightResult
    from .startup import StartupMonitor

log = logging.getLogger("launcher.leader")

Discover = Callable[[threading.Event], Sequence[Member]]


class Rank0Readiness:
    """Asks Triton rank 0, in this pod, whether it is ready: GET /v2/health/ready.

    Plain http.client rather than tritonclient: importing tritonclient's HTTP
    stack costs about half a CPU-second, taken from the ranks while they start.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: Any = None

    def __call__(self) -> bool:
        import http.client  # first asked once mpirun runs: not on the way to starting it

        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            self._connection.request("GET", "/v2/health/ready")
            response = self._connection.getresponse()
            response.read()
            return bool(response.status == 200)
        except (OSError, http.client.HTTPException):  # refused, reset, timed out: not ready yet
            self.close()
            return False

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


@dataclasses.dataclass
class Leader:
    config: LaunchConfig
    discover: Discover
    agent: str | None  # None: every rank runs on this machine
    environ: dict[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    check_repository: bool = True
    group_changed: Callable[[], Outcome | None] | None = None  # how the group ended the launch, else None
    # Serve health and metrics from the start, because discovery may wait (Kubernetes); with static
    # hosts they are served right after mpirun starts, which spares their imports on the way to it.
    health_first: bool = False
    # In Kubernetes: where failures are kept across the group's recreations; with it, a failure parks
    # or backs off (config.restart, failures.py) instead of exiting at once.
    failure_log: FailureLog | None = None
    live_bar: bool = False  # startup progress as a bar on the terminal instead of log lines (launcher local)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.metrics: LeaderMetrics | None = None
        self.supervisor: Supervisor | None = None
        self._health: HealthServer | None = None
        self._health_socket: socket.socket | None = None
        self.phase = LeaderPhase.CONFIG  # before the supervisor's own phases
        self.parked: str | None = None  # the failure a parked leader reports

    def serve_health(self) -> LeaderMetrics:
        """The leader's metrics and its /healthz, /readyz, /metrics server, made on first call."""
        if self.metrics is None:
            from .observability import HealthServer, LeaderMetrics

            self.metrics = LeaderMetrics()
            port = self._health_socket or self.config.health_port
            self._health = HealthServer(port, self.metrics.registry, self._live, self._ready).start()
        return self.metrics

    def _enter(self, phase: LeaderPhase) -> None:
        self.phase = phase
        if self.metrics is not None:
            self.metrics.phases.enter(phase)

    def preflight_checks(self) -> tuple[str, MpiFlavor, TritonCommand]:
        """Everything checkable before starting anything."""
        if self.check_repository:
            check_model_repository(self.config)
            check_engine(self.config)
        mpirun, flavor = detect_mpi(self.config.mpirun, self.environ)
        if self.agent is not None and shutil.which(self.agent, path=self.environ.get("PATH")) is None:
            raise MissingExecutableError(
                f"--rsh-agent={self.agent}: no such executable; install the launcher's kubessh or pass the agent's path"
            )
        if self.config.nsys.enabled and shutil.which(self.config.nsys.binary) is None:
            raise MissingExecutableError(
                f"--nsys-binary={self.config.nsys.binary}: Nsight Systems not found; install it or turn --nsys off"
            )
        return mpirun, flavor, find_tritonserver(self.config.tritonserver)

    def preflight(self, members: Sequence[Member], mpirun: str, flavor: MpiFlavor, triton: TritonCommand) -> None:
        """Run the fabric check through the same hosts, agent and environment; raise if it fails."""
        from .preflight.check import format_result, summary_line

        metrics = self.serve_health()
        result = check_fabric(self.config, members, mpirun, flavor, triton, self.environ, self.agent, self.stop)
        log.info(summary_line(result))
        metrics.preflight_passed.set(1 if result.passed else 0)
        for transport in result.sweeps:
            largest = result.largest(transport)
            if largest:
                metrics.preflight_busbw.labels(transport).set(largest["busbw"])
        if not result.passed:
            log.error("\n%s", format_result(result))
            raise LauncherError(summary_line(result) + "; fix the fabric or run without --preflight",
                                ExitCode.PREFLIGHT_FAILED)

    def run(self, found_before: LauncherError | None = None) -> int:
        """Launch and supervise; ``found_before``: a failure found before this leader could be configured,
        handled like one of the launch's own (kept, then park, back off or exit)."""
        self._health_socket = reserve_port(self.config.health_port)  # a port in use fails before anything starts
        install_stop_handlers(self.stop)
        try:
            if found_before is not None:
                raise found_before
            return self._launch()
        except LauncherError as exc:
            return self._failed(exc)
        finally:
            self._enter(LeaderPhase.EXITED)
            if self._health is not None:
                self._health.stop()
            self._health_socket.close()

    def _launch(self) -> int:
        if self.health_first:
            self.serve_health()
        mpirun, flavor, triton = self.preflight_checks()
        rank0_ready = Rank0Readiness(self.config.http_port)
        self._enter(LeaderPhase.DISCOVERY)
        members = self.discover(self.stop)
        log.info("discovery: %d/%d pods found", len(members), self.config.pods)
        self._enter(LeaderPhase.READINESS)
        if self.agent is not None and len(members) > 1:
            wait_until_reachable(self.agent, members[1:], self.config.discovery_timeout_s, self.stop,
                                 {**self.environ, **agent_env(self.config, members)})
        if self.config.preflight.enabled:
            self._enter(LeaderPhase.PREFLIGHT)
            self.preflight(members, mpirun, flavor, triton)
        plan = launch_plan(self.config, members, mpirun, flavor, triton, self.environ, self.agent)
        options = SupervisorOptions(
            startup_timeout_s=self.config.startup_timeout_s,
            stop_grace_s=self.config.stop_grace_s,
            local_ranks=sum(1 for r in plan.ranks if r.pod == plan.ranks[0].pod),
            group_settle_s=1.0 if self.group_changed is not None else 0.0,
            canary=self.config.canary, canary_port=self.config.http_port,
            drain_delay_s=self.config.drain_delay_s, drain_timeout_s=self.config.drain_timeout_s,
            endpoints=(self.config.http_port, self.config.grpc_port),
        )
        self.supervisor = Supervisor(
            plan, options, self.serve_health, rank0_ready, self.stop, self.environ, self.group_changed,
            progress=lambda: self.startup_monitor(plan),
        )
        if self.stop.is_set():
            raise LauncherError("stopped before launch", ExitCode.INTERRUPTED)
        return finish(self.supervisor.run())

    def startup_monitor(self, plan: LaunchPlan) -> StartupMonitor:
        from .progress import rank_sizes
        from .startup import MonitorOptions, StartupMonitor

        config = self.config
        options = MonitorOptions(config.progress_interval_s, config.stall_warning_s, config.health_port,
                                 config.http_port, plan.env.get(ADMIN_KEY_ENV), self.live_bar)
        return StartupMonitor(plan, rank_sizes(config), options)

    def _failed(self, exc: LauncherError) -> int:
        """Keep the reason (termination log, Events), then park, back off or exit (failures.py)."""
        code = int(exc.exit_code)
        supervisor = self.supervisor
        if supervisor is not None:
            phase = LeaderPhase.SERVING if supervisor.time_to_ready_s is not None else LeaderPhase.LAUNCH
        else:
            phase = self.phase
        line = failure_line(code, phase.value, str(exc))
        write_termination_log(line)
        if self.failure_log is None or code == ExitCode.INTERRUPTED:
            raise exc
        earlier = self.failure_log.count(FAILED, self.config.restart.window_s)
        self.failure_log.record(FAILED, line)
        metrics = self.serve_health()
        metrics.failed.labels(str(code), phase.value).set(1)
        if is_permanent(code) and self.config.restart.on_permanent_error == "park":
            self.parked = line
            log.error("%s; parked: no restart can fix this, so the group stays (unready) until its pods are "
                      "replaced; fix the cause and roll the pods (helm upgrade), or delete the leader pod", line)
            self.stop.wait()
            return ExitCode.OK
        delay = self.config.restart.delay(earlier)
        if delay:
            self.parked = (f"backing off {delay:.0f}s after {earlier + 1} failures in "
                           f"{self.config.restart.window_s:.0f}s: {line}")
            log.warning("%s", self.parked)
            self.stop.wait(delay)
        raise exc

    def _live(self) -> tuple[bool, str]:
        assert self.metrics is not None
        return True, self.parked or self.metrics.phases.current.value

    def _ready(self) -> tuple[bool, str]:
        assert self.metrics is not None
        if self.parked:
            return False, f"not ready: {self.parked}"
        if self.stop.is_set():  # unready the moment a stop is asked for: the drain starts
            return False, "not ready: stopping"
        supervisor = self.supervisor
        if supervisor is None or not supervisor.ready:
            progress = supervisor.progress.readiness_suffix() if supervisor and supervisor.progress else ""
            return False, f"not ready: {self.metrics.phases.current.value}{progress}"
        if not supervisor.all_ranks_alive:
            return False, "not ready: a rank is gone"
        return True, "ready"


def launch_plan(config: LaunchConfig, members: Sequence[Member], mpirun: str, flavor: MpiFlavor,
                triton: TritonCommand, environ: Mapping[str, str], agent: str | None,
                program: tuple[str, ...] | None = None) -> LaunchPlan:
    """The plan of one launch (a fresh launch id) with the detected mpirun."""
    return build_plan(
        dataclasses.replace(config, mpirun=mpirun), members, flavor, triton=triton, environ=environ,
        launch_id=uuid.uuid4().hex[:16], is_root=os.geteuid() == 0, agent=agent, program=program,
    )


def check_fabric(config: LaunchConfig, members: Sequence[Member], mpirun: str, flavor: MpiFlavor,
                 triton: TritonCommand, environ: Mapping[str, str], agent: str | None,
                 stop: threading.Event | None = None) -> PreflightResult:
    """The fabric check (``launcher preflight``, ``--preflight``) through the launch's own plan."""
    from .preflight.check import rank_program, run_preflight

    options = config.preflight
    program = rank_program(sys.executable, options.deadline_s, options.max_bytes)
    plan = launch_plan(config, members, mpirun, flavor, triton, environ, agent, program=program)
    log.info("preflight: %d ranks on %d pods, deadline %gs", len(plan.ranks), len(plan.hosts), options.deadline_s)
    return run_preflight(plan, environ, options.deadline_s + 10.0, stop)
