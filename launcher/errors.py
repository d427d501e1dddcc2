"""The launcher's own errors and the exit codes they map to.

Every failure a user can cause or must act on is a ``LauncherError``: the CLI
prints its one-line message and exits with its code, never a traceback.
Codes follow sysexits(3) where one fits so they do not collide with the small
numbers mpirun returns for failed ranks.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 2  # click's own code for unknown flags and the like
    CONFIG_INVALID = 64  # a flag or environment value breaks a rule
    MODEL_REPOSITORY = 65  # repository or model missing or malformed
    ENGINE_MISMATCH = 66  # engine was built for another tp/pp/world size
    INTERNAL = 70  # a bug in the launcher
    MISSING_EXECUTABLE = 69  # mpirun, tritonserver, nsys or the agent not found
    DISCOVERY_TIMEOUT = 75  # the group's pods did not all appear in time
    WORKERS_UNREACHABLE = 76  # some worker could not be exec'd into in time
    STARTUP_TIMEOUT = 77  # rank 0 did not become ready in time
    RANK_LOST = 78  # a rank died, or mpirun ended on its own once serving
    GROUP_CHANGED = 79  # a pod of the group was deleted, restarted or not ready
    PREFLIGHT_FAILED = 80  # the fabric check found a rank, GPU or link at fault
    FORBIDDEN = 81  # the API server refused the launcher's credentials or RBAC permissions
    HUNG = 82  # rank 0 answered no canary inference in time: a rank is stuck
    NO_ANSWER = 83  # launcher infer (helm test): no well-formed answer to the inference
    INTERRUPTED = 130  # stopped by a signal before the launch was complete


class LauncherError(Exception):
    """A failure with a one-line message for the user and an exit code."""

    exit_code: int = ExitCode.INTERNAL  # an ExitCode, or mpirun's own status when it failed first

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(LauncherError):
    exit_code = ExitCode.CONFIG_INVALID


class ModelRepositoryError(LauncherError):
    exit_code = ExitCode.MODEL_REPOSITORY


class EngineMismatchError(LauncherError):
    exit_code = ExitCode.ENGINE_MISMATCH


class MissingExecutableError(LauncherError):
    exit_code = ExitCode.MISSING_EXECUTABLE
