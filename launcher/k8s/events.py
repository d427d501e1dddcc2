"""Events on the LeaderWorkerSet and on the leader's pod: where a group's failures are kept.

``kubectl describe lws NAME`` and ``kubectl get events`` show them after the group's pods, and their
logs, are gone; ``count`` reads them back for the restart backoff. Recording is best effort: a
failure to record is logged and never changes how the launch ends.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from .watch import kube

log = logging.getLogger("launcher.k8s")

COMPONENT = "lws-triton-launcher"


class GroupEvents:
    def __init__(self, api_client: Any, namespace: str, lws_name: str, pod_name: str, pod_uid: str | None) -> None:
        self.namespace, self.lws_name, self.pod_name = namespace, lws_name, pod_name
        self._core = kube("client").CoreV1Api(api_client)
        self._custom = kube("client").CustomObjectsApi(api_client)
        self._pod = {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "namespace": namespace, "uid": pod_uid}
        self._lws: dict[str, Any] | None = None

    def _lws_ref(self) -> dict[str, Any]:
        if self._lws is None:  # its uid: kubectl describe lws matches events by it
            lws = self._custom.get_namespaced_custom_object(
                "leaderworkerset.x-k8s.io", "v1", self.namespace, "leaderworkersets", self.lws_name)
            self._lws = {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
                         "name": self.lws_name, "namespace": self.namespace, "uid": lws["metadata"]["uid"]}
        return self._lws

    def record(self, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        for target in ("lws", "pod"):
            try:
                obj = self._lws_ref() if target == "lws" else self._pod
                self._core.create_namespaced_event(self.namespace, {
                    "metadata": {"generateName": f"{obj['name']}."},
                    "involvedObject": {k: v for k, v in obj.items() if v},
                    "reason": reason, "message": message[:1024], "type": "Warning", "count": 1,
                    "firstTimestamp": now, "lastTimestamp": now,
                    "source": {"component": COMPONENT, "host": self.pod_name},
                    "reportingComponent": COMPONENT, "reportingInstance": self.pod_name})
            except Exception as exc:  # noqa: BLE001 - best effort: the failure itself matters more
                log.warning("cannot record the %s Event on the %s: %s", reason, target, str(exc).splitlines()[0])

    def count(self, reason: str, window_s: float) -> int:
        """Events of ``reason`` on this LeaderWorkerSet in the last ``window_s`` seconds."""
        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=window_s)
        try:
            events = self._core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={self.lws_name},reason={reason},"
                                               "involvedObject.kind=LeaderWorkerSet").items
        except Exception as exc:  # noqa: BLE001 - without history, no backoff: as before this existed
            log.warning("cannot read earlier %s Events: %s", reason, str(exc).splitlines()[0])
            return 0
        return sum(1 for e in events if (e.last_timestamp or e.event_time or e.first_timestamp) and
                   (e.last_timestamp or e.event_time or e.first_timestamp) >= since)
