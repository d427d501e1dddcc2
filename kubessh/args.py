"""The command line, as mpirun and the leader write it, and the environment that completes it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubessh.errors import Exit, KubesshError

POD_UIDS_ENV = "KUBESSH_POD_UIDS"
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_UID = re.compile(r"[0-9A-Za-z][-0-9A-Za-z]{0,63}\Z")

USAGE = """\
usage: kubessh [options] [ssh options] POD COMMAND...
       kubessh --probe [options] POD

Runs COMMAND (words joined, through sh -c) in POD through the Kubernetes API,
like ssh: stdio streamed, the remote exit status returned. MPI daemon
launches (orted, prted) are started detached and kubessh returns once they run.

  --namespace NS     pod namespace (env LAUNCHER_NAMESPACE; else the service account's)
  --container NAME   container (env KUBESSH_CONTAINER; else the pod's first)
  --group-key KEY    LWS group key the pod must carry (env LAUNCHER_GROUP_KEY)
  --any-pod          allow any pod when no group key is known
  --probe            exit 0 iff exec into POD works
ssh options before POD (-x, -o X, -p N, ...) are accepted and ignored.
Environment: KUBESSH_DETACH=auto|never (never: daemons stay on the exec
stream), KUBESSH_DETACH_CONFIRM_S (0.5: how long a detached daemon must live),
KUBESSH_RETRY_S (20: budget for retrying 429/5xx/refused before anything ran),
KUBESSH_POD_UIDS (set by the leader: a JSON object of pod name to uid; POD must
be one of them, with that uid, and its container's LAUNCHER_POD_UID too).

exit status: the remote command's; 250 usage, 251 credentials (token, CA or
kubeconfig unusable), 252 forbidden (RBAC, or an admission policy such as the
chart's), 253 pod not in this group (or not the pod the leader discovered), 254
no such pod, 255 API or exec failure."""

_VALUED = {"--namespace": "namespace", "--container": "container", "--group-key": "group_key"}
_SSH_VALUED = set("BbcDEeFIiJLlmOopQRSWw")


@dataclass(frozen=True)
class Request:
    """Everything one call needs, command line and environment together: nothing is read later."""

    pod: str
    words: tuple[str, ...] = ()
    namespace: str | None = None
    container: str | None = None
    group_key: str | None = None
    any_pod: bool = False
    probe: bool = False
    retry_s: float = 20.0  # KUBESSH_RETRY_S
    detach: bool = True  # KUBESSH_DETACH=auto (never: False)
    detach_confirm_s: float = 0.5  # KUBESSH_DETACH_CONFIRM_S
    expected_uid: str | None = None  # the pod's uid in KUBESSH_POD_UIDS
    uid_in_exec: bool = True  # KUBESSH_CHECK_UID_IN_EXEC=yes|no: check it again inside the exec


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(environ.get(name, default))
    except ValueError:
        raise KubesshError(f"{name}={environ[name]!r}: not a number of seconds", Exit.USAGE) from None


def _uid_in_exec(environ: Mapping[str, str]) -> bool:
    """KUBESSH_CHECK_UID_IN_EXEC=no for runtimes whose exec does not run in the container's environment
    (kwok's): then only the read just before the exec checks the uid."""
    mode = environ.get("KUBESSH_CHECK_UID_IN_EXEC", "yes")
    if mode not in ("yes", "no"):
        raise KubesshError(f"KUBESSH_CHECK_UID_IN_EXEC={mode!r}: use yes (the default) or no", Exit.USAGE)
    return mode == "yes"


def _detach(environ: Mapping[str, str]) -> bool:
    """KUBESSH_DETACH=never keeps MPI daemons on the exec stream (debugging only: see README)."""
    mode = environ.get("KUBESSH_DETACH", "auto")
    if mode not in ("auto", "never"):
        raise KubesshError(f"KUBESSH_DETACH={mode!r}: use auto (the default) or never", Exit.USAGE)
    return mode == "auto"


def _expected_uid(environ: Mapping[str, str], pod: str) -> str | None:
    """The uid the leader discovered for ``pod`` (KUBESSH_POD_UIDS); None when no map is given."""
    text = environ.get(POD_UIDS_ENV)
    if not text:
        return None
    try:
        uids = json.loads(text)
    except ValueError:
        uids = None
    if not (isinstance(uids, dict) and all(isinstance(k, str) and _POD_NAME.match(k) and isinstance(v, str)
                                           and _UID.match(v) for k, v in uids.items())):
        raise KubesshError(f"{POD_UIDS_ENV}={text[:100]!r}: not a JSON object of pod names to uids; the leader "
                           "sets it (unset it to exec by hand)", Exit.USAGE)
    if pod not in uids:
        raise KubesshError(f"refusing pod {pod}: not one of the {len(uids)} pods the leader discovered "
                           f"({POD_UIDS_ENV})", Exit.REFUSED)
    return str(uids[pod])


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Request:
    """Options up to the first plain word (the pod, ``user@`` dropped); the rest is the command."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        word = argv[i]
        i += 1
        if word == "--":
            break
        name, eq, value = word.partition("=")
        if name in _VALUED:
            if not eq:
                if i >= len(argv):
                    raise KubesshError(f"{name} needs a value (see kubessh --help)", Exit.USAGE)
                value, i = argv[i], i + 1
            values[_VALUED[name]] = value
        elif word in ("--any-pod", "--probe", "--help", "-h"):
            flags.add(word)
        elif word.startswith("--"):
            raise KubesshError(f"unknown option {word} (see kubessh --help)", Exit.USAGE)
        elif len(word) == 2 and word[1] in _SSH_VALUED:
            i += 1  # an ssh option with a value: skip both
    if flags & {"--help", "-h"}:
        raise KubesshError(USAGE, Exit.OK)
    if i >= len(argv):
        raise KubesshError("no pod given (see kubessh --help)", Exit.USAGE)
    pod, words = argv[i].rpartition("@")[2], tuple(argv[i + 1:])
    if words and "--probe" in flags:
        raise KubesshError(f"--probe takes no command (it runs 'true' in {pod})", Exit.USAGE)
    if not words and "--probe" not in flags:
        raise KubesshError(f"no command for {pod} (kubessh opens no interactive shell)", Exit.USAGE)
    request = Request(
        pod=pod, words=words, probe="--probe" in flags, any_pod="--any-pod" in flags,
        namespace=values.get("namespace") or environ.get("LAUNCHER_NAMESPACE") or None,
        container=values.get("container") or environ.get("KUBESSH_CONTAINER") or None,
        group_key=values.get("group_key") or environ.get("LAUNCHER_GROUP_KEY") or None,
        retry_s=_seconds(environ, "KUBESSH_RETRY_S", Request.retry_s), detach=_detach(environ),
        detach_confirm_s=_seconds(environ, "KUBESSH_DETACH_CONFIRM_S", Request.detach_confirm_s),
        expected_uid=_expected_uid(environ, pod), uid_in_exec=_uid_in_exec(environ),
    )
    if request.group_key is None and not request.any_pod:
        raise KubesshError("no group key (set LAUNCHER_GROUP_KEY or --group-key, or pass --any-pod): "
                           f"refusing to exec into {pod}", Exit.REFUSED)
    return request
