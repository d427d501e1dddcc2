"""Kubernetes discovery and group supervision for the leader.

Layers: ``pods`` (pure: a pod object -> ``PodState``, group evaluation and
messages), ``watch`` (one list + watch thread per group keeping those states
current), ``group`` (what the leader calls: discover, then ``changed``).
The ``kubernetes`` client is imported lazily, only by ``watch``.
"""

from __future__ import annotations

from .group import KubernetesGroup, resolve_namespace
from .pods import GROUP_KEY_LABEL, WORKER_INDEX_LABEL, PodState

__all__ = ["GROUP_KEY_LABEL", "WORKER_INDEX_LABEL", "KubernetesGroup", "PodState", "resolve_namespace"]
