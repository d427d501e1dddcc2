"""How far a model load has got, measured where it happens: the bytes each rank has read, GPU memory.

Bytes read are ``rchar`` of ``/proc/<pid>/io``, summed over a rank's process and every process
under it (Triton's python backend loads a model in a stub, a child of the rank). ``rchar`` counts
every byte a ``read()`` returned, wherever it came from: the page cache (a model loaded again on the
same node) and network filesystems (NFS, Lustre, FUSE mounts of object stores) included, which is
where large models are read from. ``read_bytes`` would count only what a block device delivered, so
a model already in the page cache or on NFS would show no progress at all. The price: ``rchar``
also counts a rank's other reads (its Python imports, sockets and pipes: about 11 MB for the toy
model's python backend stub, nothing next to an engine of gigabytes), and nothing read through
``mmap``. A child's counts move to its parent when it is reaped, so a rank's figure is kept
monotonic (the largest seen).

GPU memory used per local GPU comes from NVML (``nvidia-ml-py``, imported only if installed); without
it, or without a driver, there are no GPU figures.

A worker agent exports its ranks' figures on its /metrics (``export``, ``publish``); the leader reads
them back from there (``parse_pod_figures``): both sides of that text are here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .plan import MPI_LAUNCHERS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger("launcher.loadmeter")

RANK_ENV_KEYS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK")  # what MPI sets in every rank's environment
RANK_BYTES = "launcher_worker_rank_bytes_read"
RANK_COUNT = "launcher_worker_ranks"
GPU_USED = "launcher_worker_gpu_memory_used_bytes"


@dataclasses.dataclass(frozen=True)
class PodFigures:
    """One pod's load figures: bytes read by each rank (by rank number), its live ranks, and the memory
    used on each of its GPUs (by NVML index; empty without NVML)."""

    rank_bytes: Mapping[int, int]
    alive: int
    gpu_used: Mapping[int, int] = dataclasses.field(default_factory=dict)


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, name) of every process, from /proc/<pid>/stat."""
    return ProcessTable()(full=True)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, name) of a process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    close = stat.rfind(b")")
    return int(stat[close + 2 :].split(b" ", 2)[1]), stat[stat.find(b"(") + 1 : close].decode(errors="replace")


class ProcessTable:
    """``process_table``, reading only the processes not seen before unless asked for a full read: listing
    /proc costs a twentieth of reading every process's stat. A process's parent and name change only when
    it is orphaned or execs, so a caller reads fully while that matters (its ranks not all found yet) and
    now and then."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[int, str]] = {}

    def __call__(self, full: bool = False) -> dict[int, tuple[int, str]]:
        table = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                pid = int(name)
                entry = None if full else self._known.get(pid)
                if entry is None:
                    entry = _stat(pid)
                if entry is not None:
                    table[pid] = entry
        self._known = table
        return table


def children_of(table: Mapping[int, tuple[int, str]]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    return children


def tree(children: Mapping[int, list[int]], root: int) -> list[int]:
    """``root`` and every process under it."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def rchar(pid: int) -> int:
    """Bytes the process has read (all its threads, and its children it reaped); 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            return int(f.readline().split()[1])  # the first line: "rchar: N"
    except (OSError, ValueError, IndexError):
        return 0


def rank_number(pid: int) -> int | None:
    """The MPI rank in the process's environment, None if it carries none."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            variables = f.read().split(b"\0")
    except OSError:
        return None
    for key in RANK_ENV_KEYS:
        prefix = key.encode() + b"="
        for variable in variables:
            if variable.startswith(prefix) and variable[len(prefix) :].isdigit():
                return int(variable[len(prefix) :])
    return None


class RankMeter:
    """Bytes read per rank, each rank's the largest sum seen over its process tree."""

    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}
        self._ranks: dict[int, int | None] = {}  # pid -> rank number, read once per process

    def rank_of(self, pid: int) -> int | None:
        """The process's MPI rank, read once it has one (a child MPI forked has none until it execs)."""
        if self._ranks.get(pid) is None:
            self._ranks[pid] = rank_number(pid)
        return self._ranks[pid]

    def sample(self, roots: Iterable[int], table: Mapping[int, tuple[int, str]] | None = None) -> dict[int, int]:
        """Bytes read by the ranks whose topmost processes are ``roots`` (pids); every rank seen so far."""
        table = process_table() if table is None else table
        children = children_of(table)
        for pid in roots:
            rank = self.rank_of(pid)
            if rank is not None:
                read = sum(rchar(p) for p in tree(children, pid))
                self.bytes[rank] = max(self.bytes.get(rank, 0), read)
        self._ranks = {pid: rank for pid, rank in self._ranks.items() if pid in table}
        return dict(self.bytes)


def rank_roots_under(table: Mapping[int, tuple[int, str]], pid: int) -> list[int]:
    """The processes MPI started under ``pid`` (mpirun): those whose parent is an MPI launcher."""
    if pid not in table:  # mpirun has ended
        return []
    return [p for p in tree(children_of(table), pid)
            if table[p][1] not in MPI_LAUNCHERS and table.get(table[p][0], (0, ""))[1] in MPI_LAUNCHERS]


class GpuMeter:
    """Memory used on each GPU NVML sees; nothing when nvidia-ml-py or the driver is missing."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
        except ImportError:
            log.debug("no nvidia-ml-py: no GPU memory figures")
        except Exception as exc:  # noqa: BLE001 - pynvml.NVMLError and whatever a broken driver raises
            log.info("NVML unusable (%s): no GPU memory figures", exc)

    def used(self) -> dict[int, int]:
        if self._nvml is None:
            return {}
        try:
            count = self._nvml.nvmlDeviceGetCount()
            return {i: self._used(self._nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)}
        except Exception as exc:  # noqa: BLE001 - a GPU fallen off the bus must not end the sampling
            log.debug("NVML: %s", exc)
            return {}

    def _used(self, handle: Any) -> int:
        """Bytes in use, as nvidia-smi counts them: without the driver's reservation (about 600 MiB on an
        H200) where NVML's version 2 call exists, which the version 1 call includes."""
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if version is not None:
            try:
                return int(self._nvml.nvmlDeviceGetMemoryInfo(handle, version=version).used)
            except Exception as exc:  # noqa: BLE001 - an older driver: the version 1 call below
                log.debug("NVML memory info v2: %s", exc)
        return int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used)


class WorkerExport:
    """A worker pod's figures on its /metrics (what ``parse_pod_figures`` reads back)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Gauge

        self.rank_bytes: Gauge = Gauge(RANK_BYTES, "Bytes read so far by each rank of this pod and its children "
                                       "(rchar)", ["rank"], registry=registry)
        self.gpu_used: Gauge = Gauge(GPU_USED, "Memory used on each GPU of this pod (NVML)", ["gpu"],
                                     registry=registry)
        self.meter, self.gpus = RankMeter(), GpuMeter()
        self.figures = PodFigures({}, 0)

    def publish(self, roots: Iterable[int], table: Mapping[int, tuple[int, str]] | None = None) -> PodFigures:
        """Measure the ranks whose topmost processes are ``roots``; ``table`` as ``process_table`` gives it."""
        roots = list(roots)
        self.figures = PodFigures(self.meter.sample(roots, table), len(roots), self.gpus.used())
        for rank, read in self.figures.rank_bytes.items():
            self.rank_bytes.labels(str(rank)).set(read)
        for gpu, used in self.figures.gpu_used.items():
            self.gpu_used.labels(str(gpu)).set(used)
        return self.figures


def human_bytes(count: float) -> str:
    """1536 -> "1.5 KiB"."""
    units, power = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while abs(count) >= 1024 and power < len(units) - 1:
        count, power = count / 1024, power + 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"


def parse_pod_figures(text: str) -> PodFigures:
    """A worker's figures from its /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    rank_bytes, gpu_used, alive = {}, {}, 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == RANK_BYTES:
                rank_bytes[int(sample.labels["rank"])] = int(sample.value)
            elif sample.name == GPU_USED:
                gpu_used[int(sample.labels["gpu"])] = int(sample.value)
            elif sample.name == RANK_COUNT:
                alive = int(sample.value)
    return PodFigures(rank_bytes, alive, gpu_used)
