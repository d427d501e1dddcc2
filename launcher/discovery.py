"""Finding the group's pods, and waiting until each can be exec'd into.

Two sources of members: a static host list (``launcher local``, ``--hosts``)
or the Kubernetes API. Readiness asks the remote-launch agent to run ``true``
in every worker pod, in parallel, with the environment mpirun will give it,
so a launch starts only when the path mpirun will take works.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .config import LaunchConfig
from .errors import ConfigError, ExitCode, LauncherError
from .plan import Member

log = logging.getLogger("launcher.discovery")


_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def parse_hosts(text: str, config: LaunchConfig, flag: str = "--hosts") -> list[Member]:
    """Members from ``pod[=address],...`` in worker-index order: one distinct pod name per pod of the
    group, each a DNS-1123 label (what Kubernetes names pods), each address an IPv4 or IPv6 address
    (default: the name, which the agent resolves)."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    members = []
    for index, word in enumerate(words):
        pod, sep, address = word.partition("=")
        if not _POD_NAME.match(pod):
            raise ConfigError(f"{flag}={text}: {pod!r} is not a pod name (lower-case letters, digits and '-', "
                              "at most 63, starting and ending with a letter or digit); write POD[=ADDRESS],...")
        if sep:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ConfigError(f"{flag}={text}: {address!r} (of {pod}) is not an IPv4 or IPv6 address; "
                                  "write POD=ADDRESS with the pod's IP, or POD alone") from None
        members.append(Member(pod, address or pod, index))
    names = [m.pod for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{flag}={text}: {', '.join(twice)} listed twice; list each pod of the group once")
    if len(members) != config.pods:
        raise ConfigError(f"{flag}={text}: {len(members)} pods given but tp*pp/gpus-per-pod="
                          f"{config.world_size}/{config.gpus_per_pod} needs {config.pods}; list one host per pod")
    return members


Probe = Callable[[str, float], tuple[bool, str]]  # (pod, timeout) -> (reachable, why not)


def agent_probe(agent: str, environ: Mapping[str, str]) -> Probe:
    """How to ask ``agent`` whether a pod can be exec'd into, with the environment mpirun gives it.

    kubessh is asked in-process: the same code, credentials and exec as the binary mpirun runs
    (whose presence the leader has checked), without a Python start-up per worker, which on
    2 cores cost ~0.8 s at 8 pods. Any other agent runs as ``agent POD true``."""
    if Path(agent).name == "kubessh":
        return _kubessh_probe(environ)
    return lambda pod, timeout_s: _probe_command(agent, pod, timeout_s, environ)


def _probe_command(agent: str, pod: str, timeout_s: float, environ: Mapping[str, str]) -> tuple[bool, str]:
    try:
        done = subprocess.run([agent, pod, "true"], capture_output=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL, env=dict(environ))
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout_s:.0f}s"
    except OSError as exc:
        return False, str(exc)
    if done.returncode == 0:
        return True, "ok"
    lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
    return False, (lines[-1] if lines else f"exit status {done.returncode}")


def _kubessh_probe(environ: Mapping[str, str]) -> Probe:
    from kubessh import server
    from kubessh.args import parse
    from kubessh.cli import run
    from kubessh.errors import Exit, KubesshError

    # Answers that waiting cannot change end the launch at once, with the launcher's own code. A
    # refusal with a group key known means the pod now belongs to another group (it was replaced).
    refused = ExitCode.GROUP_CHANGED if environ.get("LAUNCHER_GROUP_KEY") else ExitCode.CONFIG_INVALID
    final = {Exit.FORBIDDEN: ExitCode.FORBIDDEN, Exit.REFUSED: refused, Exit.USAGE: ExitCode.CONFIG_INVALID,
             Exit.CREDENTIALS: ExitCode.CONFIG_INVALID}
    try:
        endpoint = server.load(dict(environ))  # once, before the probe threads share it
    except KubesshError as exc:
        raise LauncherError(f"readiness: kubessh: {exc}", final.get(exc.code, ExitCode.CONFIG_INVALID)) from None

    def probe(pod: str, timeout_s: float) -> tuple[bool, str]:
        # kubessh bounds a probe itself (10 s for the exec, its retry budget for the API)
        try:
            status = run(parse(["--probe", pod], environ), endpoint)
        except KubesshError as exc:
            if exc.code in final:
                raise LauncherError(f"readiness: kubessh cannot enter {pod}: {exc}", final[exc.code]) from None
            return False, f"kubessh: {exc}"
        return status == 0, "ok" if status == 0 else f"exit status {status}"

    return probe


def wait_until_reachable(
    agent: str,
    workers: Sequence[Member],
    timeout_s: float,
    stop: threading.Event,
    environ: Mapping[str, str],
    interval_s: float = 0.5,
    parallel: int = 16,
) -> None:
    """Return once the agent reaches every worker (``agent_probe``), else raise."""
    probe = agent_probe(agent, environ)
    pending = {m.pod: "not tried" for m in workers}
    deadline = time.monotonic() + timeout_s
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(parallel, len(workers)))) as pool:
        while pending:
            attempt_timeout = max(1.0, min(10.0, deadline - time.monotonic()))
            results = pool.map(lambda pod, timeout=attempt_timeout: (pod, probe(pod, timeout)), list(pending))
            for pod, (ok, why) in results:
                if ok:
                    del pending[pod]
                else:
                    pending[pod] = why
            reachable = len(workers) - len(pending)
            log.info("readiness: %d/%d workers reachable through %s", reachable, len(workers), agent)
            if not pending:
                return
            if stop.wait(interval_s):
                raise LauncherError("stopped while waiting for workers", ExitCode.INTERRUPTED)
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{pod}: {why}" for pod, why in pending.items())
                raise LauncherError(
                    f"{len(pending)} of {len(workers)} workers not reachable through {agent} after "
                    f"{timeout_s:.0f}s ({detail}); check the pods and the agent's permissions",
                    ExitCode.WORKERS_UNREACHABLE,
                )
