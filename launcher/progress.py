"""Startup progress on the leader: what the group's ranks have read of what they must read.

Pure bookkeeping, fed by ``startup.py`` once a second with each pod's figures (``loadmeter``):
totals from the model repository (``rank_sizes``), bytes read per pod and rank, the rate over a
recent window, an ETA (the slowest pod's: a launch is ready when its last rank is), and stalls: a
rank that has read no byte for ``stall_s`` while it has not read all it must. ``format_line`` and
``readiness_suffix`` say it in words.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Mapping, Sequence

from .config import LaunchConfig
from .loadmeter import PodFigures, human_bytes
from .model_repository import rank_load_files


def rank_sizes(config: LaunchConfig) -> dict[int, int] | None:
    """Bytes each rank reads while it loads (from the model repository); None where unknown."""
    files = rank_load_files(config)
    if files is None or len(files) != config.world_size:
        return None
    try:
        return {rank: os.stat(path).st_size for rank, path in enumerate(files)}
    except OSError:
        return None


@dataclasses.dataclass
class RankWatch:
    """When a rank's figure last moved, and whether its stall was reported."""

    read: int
    moved_at: float
    warned: bool = False


@dataclasses.dataclass(frozen=True)
class Stall:
    pod: str
    rank: int
    read: int
    total: int | None
    still_s: float

    def __str__(self) -> str:
        at = (f"at {100 * self.read / self.total:.1f}% of its {human_bytes(self.total)}" if self.total
              else f"after {human_bytes(self.read)} (its total is unknown)")
        return f"rank {self.rank} in pod {self.pod} has read no byte for {self.still_s:.0f}s, {at}"


@dataclasses.dataclass(frozen=True)
class PodProgress:
    pod: str
    read: int
    total: int | None
    rate: float  # bytes/s over the window
    answered: bool  # figures came from the pod (a worker that does not answer has none)

    @property
    def ratio(self) -> float | None:
        return None if not self.total else min(1.0, self.read / self.total)

    @property
    def eta_s(self) -> float | None:
        if self.total is None:
            return None
        left = max(0, self.total - self.read)
        return 0.0 if left == 0 else (left / self.rate if self.rate > 0 else None)


@dataclasses.dataclass(frozen=True)
class Summary:
    elapsed_s: float
    alive: int
    world: int
    pods: tuple[PodProgress, ...]
    gpu_used: int  # bytes, over every GPU with figures
    gpus: int

    @property
    def read(self) -> int:
        return sum(p.read for p in self.pods)

    @property
    def total(self) -> int | None:
        totals = [p.total for p in self.pods]
        return None if None in totals else sum(t for t in totals if t is not None)

    @property
    def ratio(self) -> float | None:
        total = self.total
        return None if not total else min(1.0, self.read / total)

    @property
    def rate(self) -> float:
        return sum(p.rate for p in self.pods)

    @property
    def eta_s(self) -> float | None:
        """The slowest pod's: None while one has no total or no rate."""
        etas = [p.eta_s for p in self.pods]
        return None if not etas or None in etas else max(e for e in etas if e is not None)

    @property
    def slowest(self) -> PodProgress:
        return min(self.pods, key=lambda p: (p.ratio if p.ratio is not None else 0.0, p.read))


class StartupProgress:
    """Figures over time, per pod and rank."""

    def __init__(self, placement: Mapping[str, Sequence[int]], sizes: Mapping[int, int] | None,
                 stall_s: float, window_s: float, started: float) -> None:
        """``placement``: pod -> its ranks (the plan's); ``sizes``: rank -> bytes it reads, None if unknown."""
        self.placement, self.sizes = placement, sizes
        self.stall_s, self.window_s, self.started = stall_s, window_s, started
        self.figures: dict[str, PodFigures | None] = {pod: None for pod in placement}
        self.history: dict[str, collections.deque[tuple[float, int]]] = {p: collections.deque() for p in placement}
        self.watches: dict[int, RankWatch] = {}

    def pod_total(self, pod: str) -> int | None:
        return None if self.sizes is None else sum(self.sizes[r] for r in self.placement[pod])

    def update(self, now: float, figures: Mapping[str, PodFigures | None]) -> list[Stall]:
        """Take one sample of every pod (None: no answer); return the stalls seen for the first time."""
        stalls = []
        for pod, pod_figures in figures.items():
            if pod_figures is None:  # no answer: nothing learnt, nothing concluded
                continue
            self.figures[pod] = pod_figures
            history = self.history[pod]
            history.append((now, self._pod_read(pod)))
            while len(history) > 2 and history[1][0] <= now - self.window_s:
                history.popleft()
            stalls += [s for rank, read in pod_figures.rank_bytes.items() if (s := self._watch(now, pod, rank, read))]
        return stalls

    def _pod_read(self, pod: str) -> int:
        """Bytes the pod's ranks read, each rank's counted up to its size where known (rchar overshoots by
        what else the rank read: its imports, its sockets)."""
        pod_figures = self.figures[pod]
        if pod_figures is None:
            return 0
        ranks = self.placement[pod]
        read = {rank: count for rank, count in pod_figures.rank_bytes.items() if rank in ranks}
        return sum(count if self.sizes is None else min(count, self.sizes[rank]) for rank, count in read.items())

    def _watch(self, now: float, pod: str, rank: int, read: int) -> Stall | None:
        watch = self.watches.get(rank)
        if watch is None or read != watch.read:
            self.watches[rank] = RankWatch(read, now)
            return None
        total = None if self.sizes is None else self.sizes.get(rank)
        if watch.warned or now - watch.moved_at < self.stall_s or (total is not None and read >= total):
            return None
        watch.warned = True
        return Stall(pod, rank, read, total, now - watch.moved_at)

    def rate(self, pod: str) -> float:
        history = self.history[pod]
        if len(history) < 2 or history[-1][0] <= history[0][0]:
            return 0.0
        return (history[-1][1] - history[0][1]) / (history[-1][0] - history[0][0])

    def summary(self, now: float) -> Summary:
        pods = tuple(PodProgress(pod, self._pod_read(pod), self.pod_total(pod), self.rate(pod),
                                 self.figures[pod] is not None) for pod in self.placement)
        known = [f for f in self.figures.values() if f is not None]
        return Summary(now - self.started, sum(f.alive for f in known), sum(len(r) for r in self.placement.values()),
                       pods, sum(sum(f.gpu_used.values()) for f in known), sum(len(f.gpu_used) for f in known))


def duration(seconds: float) -> str:
    """75 -> "1m15s"; 3725 -> "1h02m"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def amount(read: int, total: int | None) -> str:
    """ "1.2 GiB / 4.0 GiB (30.0%)", or "1.2 GiB (total unknown)"."""
    if not total:
        return f"{human_bytes(read)} (total unknown)"
    return f"{human_bytes(read)} / {human_bytes(total)} ({100 * min(1.0, read / total):.1f}%)"


def eta(summary: Summary) -> str:
    if summary.total is None:
        return ""
    left = summary.eta_s
    return ", ETA unknown (no progress)" if left is None else f", ETA {duration(left)}"


def format_line(summary: Summary, models: str) -> str:
    """The progress line: elapsed, ranks alive, read / total overall and for the slowest pod, rate, ETA,
    GPU memory where known, pods without figures, and rank 0's model states (``models``)."""
    line = (f"startup {duration(summary.elapsed_s)}: ranks {summary.alive}/{summary.world} alive, "
            f"read {amount(summary.read, summary.total)}")
    if len(summary.pods) > 1:
        slowest = summary.slowest
        line += f", slowest pod {slowest.pod} {amount(slowest.read, slowest.total)}"
    line += f", {human_bytes(summary.rate)}/s{eta(summary)}"
    if summary.gpus:
        line += f", GPU memory {human_bytes(summary.gpu_used)} used on {summary.gpus} GPUs"
    silent = [p.pod for p in summary.pods if not p.answered]
    if silent:
        line += f", no figures from {', '.join(silent)}"
    return f"{line}; {models}"


def readiness_suffix(summary: Summary) -> str:
    """What /readyz adds while starting: "; loading 30.0% (1.2 GiB of 4.0 GiB), ETA 2m13s"."""
    if summary.total is None:
        return f"; loading: read {human_bytes(summary.read)}"
    return (f"; loading {100 * (summary.ratio or 0.0):.1f}% ({human_bytes(summary.read)} of "
            f"{human_bytes(summary.total)}){eta(summary)}")
