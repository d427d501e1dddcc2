"""What runs in the pod (the command line sent to exec) and what its exit status was."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from kubessh.errors import KubesshError

_DAEMON = re.compile(r"(?:^|[\s/'\"=;])(orted|prted)(?:$|[\s'\";])")
_EXIT_IN_MESSAGE = re.compile(r"exit (?:status|code) (\d+)\s*$")

# Starts "$1" in its own session, stdio on a log file, so it outlives the exec
# stream and kubessh; then waits up to "$2" tenths of a second for an early
# exit. A daemon that daemonizes itself (Open MPI 4.1's orted) exits 0 here.
# Log and exit status live in a directory of their own: a name made from the
# shell's PID was reused (PIDs wrap, and a pod's PID namespace starts at 1),
# and a stale status file then reported an earlier daemon's exit as this one's.
DETACH_SCRIPT = r"""
if ! dir=$(mktemp -d "${TMPDIR:-/tmp}/kubessh-XXXXXXXX" 2>/dev/null); then
  echo "kubessh: cannot create a directory in ${TMPDIR:-/tmp}: the daemon was not started" >&2
  exit 255
fi
log=$dir/daemon.log
rc=$dir/exit-status
run='sh -c "$1"; echo $? >"$2.tmp" && mv "$2.tmp" "$2"'
if command -v setsid >/dev/null 2>&1; then
  setsid sh -c "$run" kubessh "$1" "$rc" </dev/null >>"$log" 2>&1 &
else
  sh -c "$run" kubessh "$1" "$rc" </dev/null >>"$log" 2>&1 &
fi
i=0
while [ "$i" -lt "$2" ]; do
  if [ -f "$rc" ]; then
    read -r status <"$rc"
    [ "$status" -eq 0 ] && exit 0
    echo "kubessh: the daemon exited with status $status at once; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit "$status"
  fi
  sleep 0.1
  i=$((i + 1))
done
"""


def is_daemon_launch(words: Sequence[str]) -> bool:
    """True for the command mpirun uses to start its daemon (orted, prted) in a pod."""
    return _DAEMON.search(" ".join(words)) is not None


def remote_argv(words: Sequence[str], detach: bool, detach_confirm_s: float = 0.5) -> list[str]:
    """mpirun pre-quotes its words for a remote shell: join them, never re-quote them."""
    command = " ".join(words)
    if not detach:
        return ["sh", "-c", command]
    tenths = max(1, round(detach_confirm_s * 10))
    return ["sh", "-c", DETACH_SCRIPT, "kubessh", command, str(tenths)]


def exit_status(status: Mapping[str, Any]) -> int:
    """The remote exit status from the exec error channel's metav1.Status.

    A kubelet sends reason NonZeroExitCode with an ExitCode cause; kwok (and
    older runtimes) only a message ending in "exit status N"."""
    if status.get("status") == "Success":
        return 0
    causes = (status.get("details") or {}).get("causes") or []
    for cause in causes:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
            return int(cause["message"])
    message = str(status.get("message", ""))
    found = _EXIT_IN_MESSAGE.search(message)
    if found:
        return int(found.group(1))
    raise KubesshError(f"exec failed: {message or status}")
