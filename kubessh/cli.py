"""``kubessh [options] POD COMMAND...``: mpirun's remote-launch agent (see kubessh.args.USAGE)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from kubessh.args import Request, parse
from kubessh.errors import Exit, KubesshError

if TYPE_CHECKING:
    from kubessh.server import ApiServer

GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
PROBE_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
# A detached launch answers once the daemon has lived KUBESSH_DETACH_CONFIRM_S; beyond that, this long for
# the exec itself to start in the container (a busy node's runtime can take seconds).
DETACH_TIMEOUT_S = 30.0


def check_group(pod: dict[str, Any], request: Request) -> None:
    """Only pods of this LWS group: the agent holds exec rights on the whole namespace."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if request.group_key is not None and labels.get(GROUP_KEY) != request.group_key:
        raise KubesshError(f"refusing pod {request.pod}: its {GROUP_KEY} label is "
                           f"{labels.get(GROUP_KEY)!r}, not this group's {request.group_key!r}", Exit.REFUSED)


def check_uid(pod: dict[str, Any], request: Request) -> None:
    """The pod by this name must be the one the leader discovered, not a replacement."""
    uid = (pod.get("metadata") or {}).get("uid")
    if request.expected_uid is not None and uid != request.expected_uid:
        raise KubesshError(f"refusing pod {request.pod}: its uid is {uid}, not {request.expected_uid} that the "
                           "leader discovered (replaced under the same name); nothing was run", Exit.REFUSED)


def check_running(pod: dict[str, Any], name: str) -> None:
    phase = (pod.get("status") or {}).get("phase")
    if phase != "Running":
        raise KubesshError(f"pod {name} is {phase or 'without a phase'}, not Running")


def first_container(pod: dict[str, Any], name: str) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        raise KubesshError(f"pod {name} has no containers", Exit.NO_POD)
    return str(containers[0]["name"])


def remote_command(request: Request) -> tuple[list[str], bool, float | None]:
    """What to exec, whether local stdin goes with it, and how long to wait for its status (None: as long
    as it runs)."""
    from kubessh.remote import is_daemon_launch, remote_argv, uid_guard

    guard = uid_guard(request.pod, request.expected_uid) if request.uid_in_exec else ""
    if request.probe:
        return ["sh", "-c", guard + "true"], False, PROBE_TIMEOUT_S
    detach = request.detach and is_daemon_launch(request.words)
    argv = remote_argv(request.words, detach, request.detach_confirm_s, guard)
    return argv, not detach, request.detach_confirm_s + DETACH_TIMEOUT_S if detach else None


def run(request: Request, endpoint: ApiServer) -> int:
    """The remote command's exit status, through the API server at ``endpoint``."""
    from kubessh import api, wsexec

    argv, stdin, timeout_s = remote_command(request)
    namespace = request.namespace or endpoint.namespace
    if not namespace:
        raise KubesshError("no namespace: set LAUNCHER_NAMESPACE or --namespace", Exit.USAGE)
    pod = api.retrying(lambda: api.get_pod(endpoint, namespace, request.pod), request.retry_s)
    check_group(pod, request)
    check_uid(pod, request)
    check_running(pod, request.pod)
    container = request.container or first_container(pod, request.pod)
    url = wsexec.exec_url(endpoint, namespace, request.pod, container, argv, stdin)
    ws = api.retrying(lambda: wsexec.connect(endpoint, namespace, request.pod, url, CONNECT_TIMEOUT_S),
                      request.retry_s)
    return wsexec.Session(ws, request.pod).wait(0 if stdin else None, timeout_s)


def main(argv: list[str] | None = None) -> int:
    try:
        request = parse(sys.argv[1:] if argv is None else argv, os.environ)
        from kubessh import server

        return run(request, server.load(os.environ))
    except KubesshError as exc:
        if exc.code == Exit.OK:  # --help
            print(exc)
        else:
            print(f"kubessh: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
