"""One list + watch of the group's pods, kept current in a daemon thread.

Three layers. ``ApiPods`` is the API: one list (pods and its resourceVersion)
and one watch from a version until it ends, as plain events (410 Gone as
``Gone``, other API errors as ``ApiError``). ``PodWatch.follow`` applies one
watch's events to the view. ``PodWatch.run`` resumes: it lists, follows from
the list's version, resumes from the last version seen when a watch ends
(server timeout, dropped connection, apiserver restart; bookmarks included)
and lists again after 410 Gone, the one place Gone is handled. Transport
errors back off and retry for as long as the watch is open: the caller owns
the deadline. A 401/403 is retried within ``kubessh.denial.DenialGrace``
(the policy kubessh follows too), then handed to the caller as a one-line
error. The clock and the pause between attempts are injectable, so the
loop is tested against a fake API without sleeping.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from kubessh.denial import DenialGrace

from ..errors import ExitCode, LauncherError
from .pods import GROUP_KEY_LABEL, PodState, pod_state

log = logging.getLogger("launcher.k8s")

WATCH_SECONDS = 60  # server-side end of one watch request; it is resumed at once
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


def equal_jitter(delay_s: float) -> float:
    """Somewhere in the second half of ``delay_s``: the leaders of many groups, cut off together by an
    API server restart, do not come back in lockstep (a re-list storm) but stay near the backoff."""
    return random.uniform(delay_s / 2, delay_s)


def kube(module: str) -> Any:
    """A ``kubernetes`` submodule, imported on first use (it takes ~0.5 s); typed Any, as the client's
    loaders and watch are unannotated."""
    return importlib.import_module(f"kubernetes.{module}")


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class ApiError(Exception):
    """An API answer other than success: ``status`` (401, 403, 500...) and its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"API error {status} {reason}")
        self.status = status


Event = tuple[str, PodState | None, str | None]  # (ADDED|MODIFIED|DELETED|BOOKMARK, pod, resourceVersion)


class PodApi(Protocol):
    def list(self) -> tuple[dict[str, PodState], str]: ...

    def watch(self, version: str) -> Iterator[Event]: ...

    def interrupt(self) -> None: ...  # cut a watch blocked in a read (from another thread)

    def close(self) -> None: ...


def load_api_client() -> Any:
    """An ApiClient from the in-cluster service account, else KUBECONFIG / ~/.kube/config."""
    client, config = kube("client"), kube("config")
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise LauncherError(
                f"no Kubernetes credentials: not in a pod ({exc}); run in the pod or set KUBECONFIG",
                ExitCode.CONFIG_INVALID,
            ) from None
    # urllib3 logs a warning for each of its own quick retries; the watch loop reports and backs off itself
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    return client.ApiClient()


def access_error(status: int, verb: str, namespace: str) -> LauncherError:
    if status == 401:
        return LauncherError(
            f"unauthorized: the API server rejected the launcher's credentials when it tried to {verb} pods "
            f"in namespace {namespace}; check the pod's service-account token", ExitCode.FORBIDDEN)
    return LauncherError(
        f"forbidden: cannot {verb} pods in namespace {namespace}; the launcher's Role needs "
        "get/list/watch on pods (and create/get on pods/exec for kubessh)", ExitCode.FORBIDDEN)


class ApiPods:
    """The group's pods through the ``kubernetes`` client: list, and watch from a version."""

    def __init__(self, api_client: Any, namespace: str, selector: str) -> None:
        self._api_client, self.namespace, self.selector = api_client, namespace, selector
        self._core = kube("client").CoreV1Api(api_client)
        self._stream: Any = None  # the open watch, so that interrupt() can cut its blocking read

    def list(self) -> tuple[dict[str, PodState], str]:
        with _api_errors():
            listed = self._core.list_namespaced_pod(self.namespace, label_selector=self.selector,
                                                    _request_timeout=(5, 30))
        return {p.name: p for p in map(pod_state, listed.items)}, str(listed.metadata.resource_version)

    def watch(self, version: str) -> Iterator[Event]:
        self._stream = kube("watch").Watch()
        try:
            with _api_errors():
                for event in self._stream.stream(
                        self._core.list_namespaced_pod, self.namespace, label_selector=self.selector,
                        resource_version=version, allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                        _request_timeout=(5, WATCH_SECONDS + 10)):
                    yield _event(event)
        finally:
            self._stream = None

    def interrupt(self) -> None:
        stream = self._stream
        response = getattr(stream, "_resp", None) if stream is not None else None
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # already closed: nothing to cut
                pass

    def close(self) -> None:
        self._api_client.close()


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
    """API exceptions as ``Gone``/``ApiError``, so that the loop needs no client types."""
    try:
        yield
    except kube("client").ApiException as exc:
        if exc.status == 410:
            raise Gone() from None
        raise ApiError(int(exc.status or 0), str(exc.reason)) from None


def _event(event: dict[str, Any]) -> Event:
    kind = str(event.get("type"))
    if kind == "BOOKMARK":
        raw = event.get("raw_object") or {}
        return kind, None, str(raw.get("metadata", {}).get("resourceVersion") or "") or None
    obj = event.get("object")
    if obj is None or not hasattr(obj, "metadata"):
        return kind, None, None
    return kind, pod_state(obj), str(obj.metadata.resource_version or "") or None


class PodWatch:
    """The current pods of one group, by name, and a condition that fires on every change."""

    def __init__(self, api: PodApi, namespace: str, clock: Callable[[], float] = time.monotonic,
                 pause: Callable[[float], object] | None = None,
                 jitter: Callable[[float], float] = equal_jitter) -> None:
        self.namespace = namespace
        self._api = api
        self._clock = clock
        self._jitter = jitter
        self._closed = threading.Event()
        self._pause = pause or self._closed.wait  # between attempts; returns early when closed
        self._pods: dict[str, PodState] = {}
        self._generation = 0
        self._error: LauncherError | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self.run, name="pod-watch", daemon=True)

    @classmethod
    def of_group(cls, api_client: Any, namespace: str, group_key: str) -> PodWatch:
        return cls(ApiPods(api_client, namespace, f"{GROUP_KEY_LABEL}={group_key}"), namespace)

    def start(self) -> PodWatch:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread: an interpreter exiting under a thread blocked in a TLS read may abort."""
        self._closed.set()
        with self._changed:
            self._changed.notify_all()
        self._api.interrupt()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def snapshot(self) -> tuple[int, dict[str, PodState]]:
        """(generation, pods by name); raises the watch's fatal error if there is one."""
        with self._changed:
            if self._error is not None:
                raise self._error
            return self._generation, dict(self._pods)

    def wait_newer(self, generation: int, timeout_s: float) -> None:
        """Return once the view is newer than ``generation``, an error is set, or ``timeout_s`` passed."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._generation != generation or self._error is not None or self._closed.is_set(),
                timeout=max(0.0, timeout_s),
            )

    def _publish(self, pods: dict[str, PodState] | None = None, error: LauncherError | None = None) -> None:
        with self._changed:
            if pods is not None:
                self._pods = pods
            self._error = error or self._error
            self._generation += 1
            self._changed.notify_all()

    def run(self) -> None:
        """List, follow, resume; until closed or denied for good (the thread's body)."""
        failures = 0
        version: str | None = None
        denial = DenialGrace()
        while not self._closed.is_set():
            try:
                if version is None:
                    pods, version = self._api.list()
                    denial.allowed()
                    self._publish(pods)
                begun = self._clock()
                version = self.follow(version)
                denial.allowed()
                if self._clock() - begun < 1.0:  # ended at once: do not hammer a struggling apiserver
                    failures = self._backoff(failures, "the watch ended at once")
                else:
                    failures = 0
            except Gone:
                log.info("pod watch: resourceVersion %s expired; listing again", version)
                version = None
            except ApiError as exc:
                if exc.status in (401, 403):
                    if denial.final(self._clock()):
                        self._publish(error=access_error(exc.status, "list" if version is None else "watch",
                                                         self.namespace))
                        break
                else:
                    denial.allowed()
                failures = self._backoff(failures, str(exc))
            except Exception as exc:  # connection refused/reset, timeouts: the apiserver may be restarting
                if self._closed.is_set():
                    break
                failures = self._backoff(failures, f"{type(exc).__name__}: {exc}")
        self._api.close()

    def follow(self, version: str) -> str:
        """Apply one watch's events from ``version`` on until it ends; returns the last version seen."""
        for kind, state, seen in self._api.watch(version):
            if self._closed.is_set():
                break
            version = seen or version
            if state is None:
                continue
            log.debug("pod watch: %s %s %s ip=%s", kind, state.name, state.describe(), state.ip or "-")
            with self._changed:
                pods = dict(self._pods)
            if kind == "DELETED":
                if pods.get(state.name, state).uid == state.uid:
                    pods.pop(state.name, None)
            else:
                pods[state.name] = state
            self._publish(pods)
        return version

    def _backoff(self, failures: int, why: str) -> int:
        delay = self._jitter(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
        log.log(logging.WARNING if failures else logging.INFO, "pod watch interrupted (%s); retrying in %.1fs",
                why.splitlines()[0][:200], delay)
        self._pause(delay)
        return failures + 1
