"""The leader's view of its LWS group: discover it, then tell when it changed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExitCode, LauncherError
from ..outcome import Ended, Outcome
from ..plan import Member
from .pods import GroupIdentity, PodState, change_of, inferred_identity, members_if_complete, screen
from .watch import PodWatch, load_api_client

log = logging.getLogger("launcher.k8s")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def resolve_namespace(namespace: str | None, sa_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    if namespace:
        return namespace
    try:
        return sa_file.read_text().strip()
    except OSError:
        raise ConfigError(
            f"--namespace is not set and {sa_file} is unreadable; pass --namespace (LAUNCHER_NAMESPACE) "
            "or run in a pod with a service account"
        ) from None


class KubernetesGroup:
    """``discover(stop)`` for the leader, then ``changed()`` for the supervisor (None while intact).

    A pod counts only if ``identity`` accepts it: named and controlled as LeaderWorkerSet makes the
    group's pods (the leader passes its own name and uid); the group key label alone is not enough.
    Without an identity (a caller outside the leader pod) it is inferred from the worker-0 pod."""

    def __init__(self, namespace: str, group_key: str, size: int, timeout_s: float,
                 api_client: Callable[[], Any] = load_api_client, progress_interval_s: float = 10.0,
                 identity: GroupIdentity | None = None) -> None:
        self.namespace, self.group_key, self.size, self.timeout_s = namespace, group_key, size, timeout_s
        self.identity = identity
        self._api_client = api_client
        self._progress_interval_s = progress_interval_s
        self._watch: PodWatch | None = None
        self._baseline: list[PodState] = []
        self._seen_ready: set[str] = set()
        self._refused: set[str] = set()  # uids of pods reported as not the group's

    def __call__(self, stop: threading.Event) -> Sequence[Member]:
        watch = self._watch = PodWatch.of_group(self._api_client(), self.namespace, self.group_key).start()
        deadline = time.monotonic() + self.timeout_s
        shown, next_progress = -1, 0.0
        while True:
            generation, pods = watch.snapshot()
            if generation == 0:  # not listed yet
                if stop.is_set() or time.monotonic() >= deadline:
                    raise self._timeout(0, ["no answer from the API server"])
                watch.wait_newer(generation, min(0.5, deadline - time.monotonic()))
                continue
            chosen = self._screen(pods.values())
            members, missing = members_if_complete(chosen, self.size)
            if members is not None:
                self._baseline = [pods[m.pod] for m in members[1:]]
                log.info("discovery: %d/%d pods running: %s", self.size, self.size,
                         ", ".join(f"{m.pod}={m.address}" for m in members))
                return members
            count, now = sum(1 for pod in chosen.values() if pod.running), time.monotonic()
            if count != shown or now >= next_progress:
                log.info("discovery: %d/%d pods running (%s)", count, self.size, "; ".join(missing))
                shown, next_progress = count, now + self._progress_interval_s
            if stop.is_set():
                raise LauncherError("stopped during discovery", ExitCode.INTERRUPTED)
            if now >= deadline:
                raise self._timeout(count, missing)
            watch.wait_newer(generation, min(0.5, deadline - now))

    def _screen(self, pods: Iterable[PodState]) -> dict[int, PodState]:
        """The group's pods by worker index; a pod with the group's labels but not its identity is
        reported once and ignored."""
        pods = list(pods)
        chosen, refused = screen(pods, self.size, self.identity or inferred_identity(pods))
        for pod, why in refused:
            if pod.uid not in self._refused:
                self._refused.add(pod.uid)
                log.warning("discovery: ignoring pod %s: it has group key %s and worker index %s but %s",
                            pod.name, self.group_key, pod.worker_index, why)
        return chosen

    def _timeout(self, count: int, missing: list[str]) -> LauncherError:
        return LauncherError(
            f"discovery: {count}/{self.size} pods of group {self.group_key} running in namespace {self.namespace} "
            f"after {self.timeout_s:.0f}s; {'; '.join(missing)}; see kubectl describe pod, or raise "
            "--discovery-timeout", ExitCode.DISCOVERY_TIMEOUT,
        )

    def changed(self) -> Outcome | None:
        """How the launch must end because its group no longer holds it (a worker pod deleted, replaced,
        restarted, terminating, not Running, or no longer ready after it was; or the watch itself
        refused), else None."""
        watch = self._watch
        if watch is None or not self._baseline:
            return None
        try:
            _, pods = watch.snapshot()
        except LauncherError as exc:
            return Outcome(Ended.FORBIDDEN if exc.exit_code == ExitCode.FORBIDDEN else Ended.GROUP_CHANGED, str(exc))
        reason = self._change(pods)
        if reason is None:
            return None
        return Outcome(Ended.GROUP_CHANGED,
                       f"{reason}: stopping the launch so that LeaderWorkerSet recreates the group")

    def _change(self, pods: dict[str, PodState]) -> str | None:
        for baseline in self._baseline:
            now = pods.get(baseline.name)
            reason = change_of(baseline, now)
            if reason is not None:
                return reason
            assert now is not None
            if now.ready:
                self._seen_ready.add(now.name)
            elif now.name in self._seen_ready:
                return f"pod {now.name} (worker {now.worker_index}) turned not ready"
        return None

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
