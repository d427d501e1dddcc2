"""The worker agent: idle until MPI starts ranks in this pod, then watch them.

States: waiting (no rank seen yet) -> ranked (MPI ranks running here) -> lost
(a rank, or the daemon that started it, died). On loss the agent ends every rank
and daemon left in the pod (an mpirun abort leaves them orphaned) and turns
unhealthy, so the liveness probe restarts the pod and LeaderWorkerSet
recreates the whole group. It never leaves "lost" by itself.

Only processes of this pod count: those sharing the agent's UTS namespace
(in a container that is every process; in tests each pod sandbox has its own).
"""

from __future__ import annotations

import logging
import os
import threading

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge

from . import procs
from .loadmeter import RANK_ENV_KEYS, WorkerExport, human_bytes
from .observability import PREFIX, PhaseTracker, WorkerState, build_info

log = logging.getLogger("launcher.worker")

DAEMON_NAMES = ("orted", "prted")


def _namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/uts")
    except OSError:
        return None


def _named(proc: psutil.Process, names: tuple[str, ...]) -> bool:
    try:
        return proc.name() in names
    except psutil.Error:
        return False


class WorkerAgent:
    def __init__(self, interval_s: float = 1.0, kill_grace_s: float = 3.0) -> None:
        self.interval_s = interval_s
        self.kill_grace_s = kill_grace_s
        self.registry = CollectorRegistry()
        build_info(self.registry, "worker")
        self.states = PhaseTracker(self.registry, WorkerState, name="worker_state")
        self.ranks_gauge = Gauge(f"{PREFIX}_worker_ranks", "MPI ranks running in this pod", registry=self.registry)
        self.daemons_gauge = Gauge(f"{PREFIX}_worker_daemons", "MPI daemons (rank parents) in this pod",
                                   registry=self.registry)
        self.losses = Counter(f"{PREFIX}_worker_rank_losses", "Times the pod's ranks were lost",
                              registry=self.registry)
        self.load = WorkerExport(self.registry)  # the ranks' bytes read and GPU memory, for the leader's progress
        self._namespace = _namespace("self")
        self._known: dict[tuple[int, float], tuple[bool, int]] = {}
        self.ranks: dict[int, psutil.Process] = {}
        self.launchers: dict[int, psutil.Process] = {}
        self.lost_reason = ""

    @property
    def state(self) -> WorkerState:
        return self.states.current

    def _identify(self, proc: psutil.Process) -> tuple[bool, int]:
        """(carries MPI rank variables and lives in this pod, parent pid), cached per process."""
        key = (proc.pid, proc.create_time())
        info = self._known.get(key)
        if info is None:
            carrier = _namespace(proc.pid) == self._namespace and any(k in proc.environ() for k in RANK_ENV_KEYS)
            info = self._known[key] = (carrier, proc.ppid())
        return info

    def _carriers(self) -> dict[int, tuple[psutil.Process, int]]:
        """Processes of this pod carrying MPI rank variables: pid -> (process, parent pid)."""
        me = os.getpid()
        carriers: dict[int, tuple[psutil.Process, int]] = {}
        alive: set[tuple[int, float]] = set()
        for proc in psutil.process_iter():
            if proc.pid == me:
                continue
            try:
                carrier, parent = self._identify(proc)
                alive.add((proc.pid, proc.create_time()))
            except (psutil.Error, OSError):
                continue
            if carrier:
                carriers[proc.pid] = (proc, parent)
        self._known = {k: v for k, v in self._known.items() if k in alive}
        return carriers

    def snapshot(self) -> tuple[dict[int, psutil.Process], dict[int, psutil.Process]]:
        """(launchers, ranks): a rank is the topmost process carrying MPI's rank variables,
        its launcher the process that started it (orted/prted, or mpirun itself)."""
        carriers = self._carriers()
        ranks = {pid: proc for pid, (proc, parent) in carriers.items() if parent not in carriers}
        launchers: dict[int, psutil.Process] = {}
        for pid, (_, parent) in carriers.items():
            if pid in ranks and parent not in launchers:
                try:
                    launchers[parent] = psutil.Process(parent)
                except psutil.Error:
                    continue
        return launchers, ranks

    def observe(self) -> None:
        """One look at the pod's processes; moves the state machine."""
        if self.state == WorkerState.LOST:
            return
        launchers, ranks = self.snapshot()
        if self.state == WorkerState.WAITING and ranks:
            self.states.enter(WorkerState.RANKED)
            log.info("ranked: %d ranks under %d MPI launchers in this pod", len(ranks), len(launchers))
        elif self.state == WorkerState.RANKED:
            gone_ranks = [pid for pid in self.ranks if pid not in ranks]
            gone_launchers = [pid for pid, p in self.launchers.items() if not procs.running(p)]
            if gone_ranks or gone_launchers:
                self._lose(f"{len(gone_ranks)} ranks and {len(gone_launchers)} MPI daemons ended")
                return
            launchers = {**self.launchers, **launchers}
        self.launchers, self.ranks = launchers, ranks
        if ranks:  # the parents from this look, not a second scan of /proc
            self.load.publish(ranks, {pid: (parent, "") for (pid, _), (_, parent) in self._known.items()})
        self.ranks_gauge.set(len(ranks))
        self.daemons_gauge.set(len(launchers))

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self.losses.inc()
        self.states.enter(WorkerState.LOST)
        leftovers = [proc for proc, _ in self._carriers().values()]
        leftovers += [p for p in self.launchers.values() if procs.running(p) and _named(p, DAEMON_NAMES)]
        if leftovers:
            log.warning("lost: %s; ending %d leftover MPI processes", reason, len(leftovers))
            procs.terminate(leftovers, self.kill_grace_s)
        else:
            log.warning("lost: %s", reason)
        self.ranks_gauge.set(0)
        self.daemons_gauge.set(0)

    def live(self) -> tuple[bool, str]:
        if self.state == WorkerState.LOST:
            return False, f"lost: {self.lost_reason}; restart the pod so the group is recreated"
        return True, self.state.value

    def ready(self) -> tuple[bool, str]:
        """As live, with the ranks' loading figures while there are ranks."""
        ok, detail = self.live()
        read = self.load.figures.rank_bytes
        if ok and self.ranks and read:
            detail += "; read " + ", ".join(f"rank {r} {human_bytes(b)}" for r, b in sorted(read.items()))
        return ok, detail

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.observe()
            except psutil.Error as exc:  # a process ended between two reads of it: the next look sees why
                log.debug("a process changed while looked at: %s", exc)
            stop.wait(self.interval_s)
