"""What runs in the pod (the command line sent to exec) and what its exit status was."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from kubessh.errors import KubesshError

_DAEMON = re.compile(r"(?:^|[\s/'\"=;])(orted|prted)(?:$|[\s'\";])")
_INTEGER = re.compile(r"[+-]?\d{1,20}\Z")
# kwok (the fast test tier's nodes) reports a failed command only as an InternalError whose message
# ends with Go's exec error: "... cmd wait: <command line>: exit status N" (the prefix comes twice).
_KWOK_EXIT = re.compile(r"\A(?:Internal error occurred: )+error executing command in container: cmd wait: "
                        r"[\s\S]*: exit status (\d{1,20})\Z")

# Ends the exec with 255, before anything starts, unless this container's LAUNCHER_POD_UID (downward
# API) is the uid the leader discovered: the pod read just before may since have been replaced under
# the same name, and the exec would then land in the new one.
UID_GUARD = r"""
if [ -z "${LAUNCHER_POD_UID+set}" ]; then
  printf 'kubessh: pod %s lacks the variable %s (set it from metadata.uid through the downward API); %s\n' \
    <pod> LAUNCHER_POD_UID 'nothing was started' >&2
  exit 255
fi
if [ "$LAUNCHER_POD_UID" != <uid> ]; then
  printf 'kubessh: pod %s has LAUNCHER_POD_UID %s, not %s that the leader discovered (%s); %s\n' \
    <pod> "$LAUNCHER_POD_UID" <uid> 'replaced under the same name' 'nothing was started' >&2
  exit 255
fi
"""

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


def uid_guard(pod: str, uid: str | None) -> str:
    """``UID_GUARD`` for ``pod`` expecting ``uid``; empty when no uid is expected."""
    if uid is None:
        return ""
    return UID_GUARD.replace("<pod>", shlex.quote(pod)).replace("<uid>", shlex.quote(uid))


def remote_argv(words: Sequence[str], detach: bool, detach_confirm_s: float = 0.5, guard: str = "") -> list[str]:
    """mpirun pre-quotes its words for a remote shell: join them, never re-quote them. ``guard`` runs first."""
    command = " ".join(words)
    if not detach:
        return ["sh", "-c", guard + command]
    tenths = max(1, round(detach_confirm_s * 10))
    return ["sh", "-c", guard + DETACH_SCRIPT, "kubessh", command, str(tenths)]


def exit_status(payload: bytes, pod: str) -> int:
    """The remote exit status from the exec error channel, which carries one metav1.Status: Success is 0;
    a Failure with reason NonZeroExitCode and an ExitCode cause (the kubelet's) is that code, 1-255.
    Anything else is a KubesshError (255): a code outside 1-255 must never pass as another status."""
    shown = _show(payload)
    try:
        status = json.loads(payload)
    except ValueError:
        raise KubesshError(f"exec in {pod}: the error channel sent malformed JSON, not a metav1.Status: {shown}") \
            from None
    if not isinstance(status, dict) or status.get("status") not in ("Success", "Failure"):
        raise KubesshError(f"exec in {pod}: the error channel sent no metav1.Status with status Success or "
                           f"Failure: {shown}")
    if status["status"] == "Success":
        return 0
    code = _exit_code(status)
    if code is None:
        message = status.get("message")
        said = _one_line(message) if isinstance(message, str) and message.strip() else shown
        raise KubesshError(f"exec in {pod} failed: {said} (a Failure with reason {status.get('reason')!r} "
                           "and no exit code)")
    if not _INTEGER.match(code) or not 1 <= int(code) <= 255:
        raise KubesshError(f"exec in {pod}: the error channel's exit code {code!r} is not an integer from 1 to "
                           f"255: {shown}")
    return int(code)


def _exit_code(status: Mapping[str, Any]) -> str | None:
    """The exit code a Failure names, as it was written; None if it names none."""
    if status.get("reason") == "NonZeroExitCode":
        details = status.get("details")
        causes = details.get("causes") if isinstance(details, dict) else None
        for cause in causes if isinstance(causes, list) else []:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                return str(cause.get("message"))
    if status.get("reason") == "InternalError":
        found = _KWOK_EXIT.match(str(status.get("message", "")))
        if found:
            return found.group(1)
    return None


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _show(payload: bytes) -> str:
    """What came, quoted on one line and cut short."""
    text = payload.decode(errors="replace")
    return repr(text if len(text) <= 300 else text[:300] + "...")
