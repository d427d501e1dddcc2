"""One list + watch of the group's pods, kept current in a daemon thread.

The thread lists (taking the list's resourceVersion), then watches from that
version. A watch that ends (server timeout, dropped connection, apiserver
restart) resumes from the last version seen, bookmarks included; 410 Gone
(the version left the apiserver's window) re-lists. Transport errors back
off and retry for as long as the watch is open: the caller owns the deadline.
A permission error is final and is handed to the caller as a one-line error.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

from ..errors import ExitCode, LauncherError
from .pods import GROUP_KEY_LABEL, PodState, pod_state

log = logging.getLogger("launcher.k8s")

WATCH_SECONDS = 60  # server-side end of one watch request; it is resumed at once
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
# 401/403 is final once it lasts this long: briefly at first (a missing Role is reported at once), longer
# once the API has answered these credentials (an apiserver just restarted denies until its caches fill).
DENIED_S = 1.0
DENIED_AFTER_SUCCESS_S = 15.0


def kube(module: str) -> Any:
    """A ``kubernetes`` submodule, imported on first use (it takes ~0.5 s); typed Any, as the client's
    loaders and watch are unannotated."""
    return importlib.import_module(f"kubernetes.{module}")


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


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


class PodWatch:
    """The current pods of one group, by name, and a condition that fires on every change."""

    def __init__(self, api_client: Any, namespace: str, group_key: str) -> None:
        self.namespace = namespace
        self.selector = f"{GROUP_KEY_LABEL}={group_key}"
        self._api_client = api_client
        self._pods: dict[str, PodState] = {}
        self._generation = 0
        self._error: LauncherError | None = None
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._stream: Any = None  # the open watch, so that close() can cut its blocking read
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def start(self) -> PodWatch:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread: an interpreter exiting under a thread blocked in a TLS read may abort."""
        self._closed.set()
        with self._changed:
            self._changed.notify_all()
        stream = self._stream
        response = getattr(stream, "_resp", None) if stream is not None else None
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # already closed: nothing to cut
                pass
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

    def _run(self) -> None:
        client = kube("client")
        core = client.CoreV1Api(self._api_client)
        failures = 0
        version: str | None = None
        served, denied_since = False, None  # a restarting apiserver denies everyone until its caches fill
        while not self._closed.is_set():
            try:
                if version is None:
                    version = self._list(core)
                    served, denied_since = True, None
                begun = time.monotonic()
                version = self._watch(core, version)
                denied_since = None
                if time.monotonic() - begun < 1.0:  # ended at once: do not hammer a struggling apiserver
                    failures = self._backoff(failures, "the watch ended at once")
                else:
                    failures = 0
            except Gone:
                log.info("pod watch: resourceVersion %s expired; listing again", version)
                version = None
            except client.ApiException as exc:
                if exc.status in (401, 403):
                    denied_since = denied_since or time.monotonic()
                    if time.monotonic() - denied_since >= (DENIED_AFTER_SUCCESS_S if served else DENIED_S):
                        self._publish(error=access_error(exc.status, "list" if version is None else "watch",
                                                         self.namespace))
                        return
                else:
                    denied_since = None
                failures = self._backoff(failures, f"API error {exc.status} {exc.reason}")
                if exc.status == 410:
                    version = None
            except Exception as exc:  # connection refused/reset, timeouts: the apiserver may be restarting
                if self._closed.is_set():
                    break
                failures = self._backoff(failures, f"{type(exc).__name__}: {exc}")
        self._api_client.close()

    def _backoff(self, failures: int, why: str) -> int:
        delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
        log.log(logging.WARNING if failures else logging.INFO, "pod watch interrupted (%s); retrying in %.1fs",
                why.splitlines()[0][:200], delay)
        self._closed.wait(delay)
        return failures + 1

    def _list(self, core: Any) -> str:
        listed = core.list_namespaced_pod(self.namespace, label_selector=self.selector, _request_timeout=(5, 30))
        self._publish({p.name: p for p in map(pod_state, listed.items)})
        return str(listed.metadata.resource_version)

    def _watch(self, core: Any, version: str) -> str:
        """Apply events from ``version`` on until the watch ends; returns the last version seen."""
        client, watch = kube("client"), kube("watch")
        self._stream = watch.Watch()
        stream = self._stream.stream(
            core.list_namespaced_pod, self.namespace, label_selector=self.selector, resource_version=version,
            allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS, _request_timeout=(5, WATCH_SECONDS + 10),
        )
        try:
            for event in stream:
                if self._closed.is_set():
                    break
                version = self._apply(event) or version
        except client.ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            raise
        finally:
            self._stream = None
        return version

    def _apply(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        if kind == "BOOKMARK":
            raw = event.get("raw_object") or {}
            return str(raw.get("metadata", {}).get("resourceVersion") or "") or None
        obj = event.get("object")
        if obj is None or not hasattr(obj, "metadata"):
            return None
        state = pod_state(obj)
        log.debug("pod watch: %s %s %s ip=%s", kind, state.name, state.describe(), state.ip or "-")
        with self._changed:
            pods = dict(self._pods)
        if kind == "DELETED":
            if pods.get(state.name, state).uid == state.uid:
                pods.pop(state.name, None)
        else:
            pods[state.name] = state
        self._publish(pods)
        return str(obj.metadata.resource_version or "") or None
