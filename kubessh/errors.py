"""kubessh's exit codes and the one exception type that carries them.

Codes 250-255 are kubessh's own; every other status is the remote command's.
255 is what ssh returns when it cannot run the command, so mpirun treats a
kubessh failure like an ssh one.
"""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0
    USAGE = 250  # malformed command line or configuration
    CREDENTIALS = 251  # a service-account or kubeconfig file (token, CA, client certificate) missing or unusable
    FORBIDDEN = 252  # RBAC: the ServiceAccount lacks a permission
    REFUSED = 253  # the pod is not in this group (or no group key is known)
    NO_POD = 254  # no such pod or container
    UNREACHABLE = 255  # API unreachable, exec failed, stream lost, daemon died early


class KubesshError(Exception):
    """A failure reported as one line on stderr and a distinct exit code."""

    def __init__(self, message: str, code: Exit = Exit.UNREACHABLE) -> None:
        super().__init__(message)
        self.code = code


class Transient(KubesshError):
    """Nothing ran yet and trying again may work (429, 5xx, connection refused, a fresh API
    server's 403); its code is the one reported if the retries run out."""
