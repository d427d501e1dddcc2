"""kubessh without a cluster: command line, remote command, exit status, API errors, retries, detach script."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kubessh import api, cli, remote, server, wsexec
from kubessh.args import Request, parse
from kubessh.denial import BEFORE_ACCEPTED_S, DenialGrace
from kubessh.errors import Exit, KubesshError, Transient

ENV = {"LAUNCHER_GROUP_KEY": "k1", "LAUNCHER_NAMESPACE": "ns1"}


def test_pod_and_words_after_ssh_options() -> None:
    req = parse(["-x", "-o", "BatchMode=yes", "-p", "22", "root@pod-1", "orted", "-mca", "'a b'"], ENV)
    assert req == Request(pod="pod-1", words=("orted", "-mca", "'a b'"), namespace="ns1", group_key="k1")


def test_the_environment_is_read_once_into_the_request() -> None:
    req = parse(["pod", "true"], {**ENV, "KUBESSH_RETRY_S": "3", "KUBESSH_DETACH": "never",
                                  "KUBESSH_DETACH_CONFIRM_S": "0.2"})
    assert (req.retry_s, req.detach, req.detach_confirm_s) == (3.0, False, 0.2)
    for bad in ({"KUBESSH_RETRY_S": "soon"}, {"KUBESSH_DETACH": "maybe"}, {"KUBESSH_DETACH_CONFIRM_S": "x"}):
        with pytest.raises(KubesshError) as err:
            parse(["pod", "true"], {**ENV, **bad})
        assert err.value.code == Exit.USAGE and next(iter(bad)) in str(err.value)


def test_no_group_key_is_refused_before_anything_else() -> None:
    with pytest.raises(KubesshError) as err:
        parse(["pod", "true"], {"LAUNCHER_NAMESPACE": "ns1"})
    assert err.value.code == Exit.REFUSED and "no group key" in str(err.value)


def test_flags_beat_environment() -> None:
    req = parse(["--namespace=ns2", "--container", "c", "--group-key", "k2", "pod", "true"],
                {**ENV, "KUBESSH_CONTAINER": "env-c"})
    assert (req.namespace, req.container, req.group_key) == ("ns2", "c", "k2")
    req = parse(["pod", "true"], {**ENV, "KUBESSH_CONTAINER": "env-c"})
    assert (req.namespace, req.container, req.group_key) == ("ns1", "env-c", "k1")


def test_probe_and_any_pod() -> None:
    assert parse(["--probe", "--any-pod", "pod"], {}) == Request(pod="pod", probe=True, any_pod=True)


@pytest.mark.parametrize("argv", [[], ["-x"], ["pod"], ["--probe", "pod", "true"], ["--bogus", "pod", "true"],
                                  ["--namespace"]])
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(KubesshError) as err:
        parse(argv, {})
    assert err.value.code == Exit.USAGE


def test_words_are_joined_not_requoted() -> None:
    assert remote.remote_argv(["echo", "'a  b'", '"c"'], detach=False) == ["sh", "-c", "echo 'a  b' \"c\""]


@pytest.mark.parametrize(("words", "daemon"), [
    (["PRTE_PREFIX=/x;", "export", "PRTE_PREFIX;", "/opt/bin/prted", "--prtemca", "ess", "env"], True),
    (["orted", "-mca", "ess", "\"env\""], True),
    (["true"], False),
    (["echo", "shorted"], False),
    (["python", "prted.py"], False),
])
def test_daemon_launches_are_recognised(words: list[str], daemon: bool) -> None:
    assert remote.is_daemon_launch(words) is daemon


def test_detached_argv_passes_the_command_as_an_argument() -> None:
    argv = remote.remote_argv(["orted", "'x y'"], detach=True, detach_confirm_s=0.3)
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["kubessh", "orted 'x y'", "3"]


def run_detach_script(command: str, tmp_path: Path, tmpdir: Path | None = None
                      ) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    argv = remote.remote_argv([command], detach=True, detach_confirm_s=0.3)
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmpdir or tmp_path)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    return done, time.monotonic() - t0


def test_detach_script_returns_while_the_daemon_runs(tmp_path: Path) -> None:
    marker = tmp_path / "alive"
    done, took = run_detach_script(f"sleep 1; touch {marker} # orted", tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "") and took < 1
    assert not marker.exists()
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the detached command did not go on running"
        time.sleep(0.05)


def test_detach_script_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    done, _ = run_detach_script("echo no such option >&2; exit 3 # prted", tmp_path)
    assert done.returncode == 3 and done.stdout == ""
    assert "exited with status 3" in done.stderr and "no such option" in done.stderr


def test_detach_script_fails_when_it_cannot_keep_a_log(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done, _ = run_detach_script(f"touch {marker} # orted", tmp_path, tmpdir=tmp_path / "missing")
    assert done.returncode == 255 and "the daemon was not started" in done.stderr
    time.sleep(0.3)
    assert not marker.exists()


def test_each_detached_launch_keeps_its_own_log_and_status(tmp_path: Path) -> None:
    # Names made from the remote shell's PID were reused (PIDs wrap; a pod's PID namespace starts
    # at 1), and an earlier daemon's status file was then read as this launch's.
    first, _ = run_detach_script("echo first >&2; exit 213 # prted", tmp_path)
    second, _ = run_detach_script("echo second; sleep 1 # prted", tmp_path)
    assert first.returncode == 213 and (second.returncode, second.stderr) == (0, "")
    dirs = sorted(tmp_path.glob("kubessh-*"))
    assert len(dirs) == 2 and all(d.is_dir() for d in dirs)
    time.sleep(1.2)
    logs = sorted((d / "daemon.log").read_text() for d in dirs)
    assert logs == ["first\n", "second\n"]


def test_detach_script_accepts_a_daemon_that_daemonizes(tmp_path: Path) -> None:
    done, _ = run_detach_script("exit 0 # orted", tmp_path)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(("status", "code"), [
    ({"status": "Success"}, 0),
    ({"status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with non-zero exit code",
      "details": {"causes": [{"reason": "ExitCode", "message": "7"}]}}, 7),
    ({"status": "Failure", "reason": "InternalError", "code": 500,  # kwok's, for a command that failed
      "message": "Internal error occurred: Internal error occurred: error executing command in container: "
                 "cmd wait: sh -c \nif [ -z x ]"
                 "; then\n  exit 2\nfi\necho ran; exit 9: exit status 9"}, 9),
])
def test_exit_status_from_the_error_channel(status: dict[str, Any], code: int) -> None:
    assert remote.exit_status(json.dumps(status).encode(), "p") == code


def exit_cause(message: Any) -> dict[str, Any]:
    return {"status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": message}]}}


@pytest.mark.parametrize("status", [
    {"status": "Failure", "message": "error dialing backend"},
    {"status": "Failure", "details": {"causes": [{"reason": "ExitCode", "message": "7"}]}},  # no reason
    {"status": "Failure", "reason": "NonZeroExitCode", "details": {"causes": "7"}},
    exit_cause("x"), exit_cause("-1"), exit_cause("256"), exit_cause("0"), exit_cause(None),
    {"status": "Failure", "reason": "InternalError", "message": "Internal error occurred: exit status 256"},
    {"status": "Failure", "reason": "InternalError",
     "message": "Internal error occurred: error executing command in container: cmd wait: sh -c x: exit status 0"},
    {"status": "Failure", "reason": "InternalError",
     "message": "Internal error occurred: error executing command in container: cmd start: sh: exit status 3"},
    {"status": "Pending"},
    {"message": "exit status 3"},
])
def test_any_other_status_is_an_exec_failure(status: dict[str, Any]) -> None:
    with pytest.raises(KubesshError) as err:
        remote.exit_status(json.dumps(status).encode(), "p")
    assert err.value.code == Exit.UNREACHABLE and "\n" not in str(err.value)
    assert str(err.value).startswith("exec in p")


def test_a_failure_without_exit_status_names_its_message() -> None:
    with pytest.raises(KubesshError) as err:
        remote.exit_status(b'{"status": "Failure", "message": "error dialing\\nbackend"}', "p")
    assert str(err.value) == "exec in p failed: error dialing backend (a Failure with reason None and no exit code)"


RBAC_DENIAL = json.dumps({"kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden", "message": (
    'pods "w" is forbidden: User "system:serviceaccount:ns:sa" cannot get resource "pods" in API group "" '
    'in the namespace "ns"')})


def test_forbidden_names_verb_resource_and_user() -> None:
    err = api.http_error(403, RBAC_DENIAL, namespace="ns", pod="w", verb="create", resource="pods/exec")
    assert err.code == Exit.FORBIDDEN
    assert str(err).startswith("forbidden: cannot get pods in namespace ns as system:serviceaccount:ns:sa (")


def test_forbidden_without_details_keeps_the_guess_and_the_token_user() -> None:
    body = json.dumps({"message": 'pods "w" is forbidden: '})
    err = api.http_error(403, body, namespace="ns", pod="w", verb="create", resource="pods/exec", user="me")
    assert str(err).startswith("forbidden: cannot create pods/exec in namespace ns as me (")


def test_an_admission_policys_refusal_is_final_and_quoted() -> None:
    message = ('pods "b-0-1" is forbidden: ValidatingAdmissionPolicy \'a.ns.exec\' with binding \'a.ns.exec\' '
               "denied request: system:serviceaccount:ns:a may exec only into the worker pods of LeaderWorkerSet ns/a")
    err = api.http_error(403, json.dumps({"message": message}), namespace="ns", pod="b-0-1", verb="create",
                         resource="pods/exec")
    assert not isinstance(err, Transient) and err.code == Exit.FORBIDDEN
    assert str(err) == f"refused by the API server's admission: {message}"


@pytest.mark.parametrize(("status", "kind", "code"), [
    (404, KubesshError, Exit.NO_POD), (401, KubesshError, Exit.UNREACHABLE), (400, KubesshError, Exit.UNREACHABLE),
    (429, Transient, Exit.UNREACHABLE), (503, Transient, Exit.UNREACHABLE)])
def test_http_errors(status: int, kind: type[KubesshError], code: Exit) -> None:
    err = api.http_error(status, "oops", namespace="ns", pod="w", verb="get", resource="pods")
    assert type(err) is kind and err.code == code


def test_retrying_retries_transient_failures_only() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Transient("503")
        return "ok"
    assert api.retrying(flaky, budget_s=5) == "ok" and len(calls) == 3

    def forbidden() -> str:
        calls.append(1)
        raise KubesshError("no", Exit.FORBIDDEN)
    calls.clear()
    with pytest.raises(KubesshError):
        api.retrying(forbidden, budget_s=5)
    assert len(calls) == 1


def test_a_denial_is_retried_briefly_then_reported_as_it_is() -> None:
    calls: list[int] = []

    def denied() -> None:
        calls.append(1)
        raise api.http_error(403, RBAC_DENIAL, namespace="ns", pod="w", verb="get", resource="pods")
    t0 = time.monotonic()
    with pytest.raises(KubesshError) as err:
        api.retrying(denied, budget_s=20)
    assert type(err.value) is KubesshError and err.value.code == Exit.FORBIDDEN
    assert str(err.value).startswith("forbidden: cannot get pods") and len(calls) > 1
    assert time.monotonic() - t0 <= BEFORE_ACCEPTED_S + 0.5


def test_retrying_gives_up_within_its_budget() -> None:
    def down() -> None:
        raise Transient("connection refused")
    t0 = time.monotonic()
    with pytest.raises(KubesshError) as err:
        api.retrying(down, budget_s=0.5)
    assert type(err.value) is KubesshError and "gave up" in str(err.value) and time.monotonic() - t0 < 1.5


def token(sub: str) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"sub": sub}).encode()).decode().rstrip("=")
    return f"e30.{payload}.sig"


def test_in_cluster_settings(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(token("system:serviceaccount:ns:sa") + "\n")
    (tmp_path / "namespace").write_text("ns")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    found = server.in_cluster(env, tmp_path)
    assert found is not None and found.url == "https://[fd00::1]:443" and found.namespace == "ns"
    assert found.user() == "system:serviceaccount:ns:sa"
    assert server.in_cluster({}, tmp_path) is None
    assert server.ApiServer(url="https://x", token="opaque").user() is None


def pod(labels: dict[str, str], phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "main"}, {"name": "side"}]},
            "status": {"phase": phase}}


def test_only_pods_of_this_group() -> None:
    cli.check_group(pod({cli.GROUP_KEY: "k1"}), Request(pod="p", group_key="k1"))
    for labels in ({cli.GROUP_KEY: "k2"}, {}):
        with pytest.raises(KubesshError) as err:
            cli.check_group(pod(labels), Request(pod="p", group_key="k1"))
        assert err.value.code == Exit.REFUSED


def test_no_group_key_is_refused_before_any_api_call(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAUNCHER_GROUP_KEY", raising=False)
    assert cli.main(["pod", "true"]) == Exit.REFUSED
    assert capsys.readouterr().err.count("\n") == 1


def test_first_container_and_phase() -> None:
    assert cli.first_container(pod({}), "p") == "main"
    with pytest.raises(KubesshError):
        cli.check_running(pod({}, "Pending"), "p")


class FakeSocket:
    """Frames as the API server sends them on an exec websocket."""

    def __init__(self, frames: list[bytes], protocol: str = "v5.channel.k8s.io") -> None:
        self.frames, self.protocol = list(frames), protocol
        self.sent: list[bytes] = []

    def getsubprotocol(self) -> str:
        return self.protocol

    def settimeout(self, timeout: float | None) -> None:
        pass

    def recv_data(self) -> tuple[int, bytes]:
        import websocket
        if not self.frames:
            raise websocket.WebSocketConnectionClosedException("closed")
        return websocket.ABNF.OPCODE_BINARY, self.frames.pop(0)

    def send_binary(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, timeout: float) -> None:
        pass


def test_session_streams_output_and_returns_the_status(capfd: pytest.CaptureFixture[str]) -> None:
    failure = {"status": "Failure", "reason": "NonZeroExitCode",
               "details": {"causes": [{"reason": "ExitCode", "message": "4"}]}}
    ws = FakeSocket([b"\x01", b"\x01out\n", b"\x02err\n", b"\x03" + json.dumps(failure).encode()])
    assert wsexec.Session(ws, "p").wait(None) == 4  # type: ignore[arg-type]
    assert capfd.readouterr() == ("out\n", "err\n")


def test_session_without_a_status_is_a_failure(tmp_path: Path) -> None:
    with pytest.raises(KubesshError) as err:
        wsexec.Session(FakeSocket([b"\x01partial"]), "p").wait(None)  # type: ignore[arg-type]
    assert err.value.code == Exit.UNREACHABLE and "without an exit status" in str(err.value)


def test_session_sends_stdin_then_closes_it_on_v5(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"data")
    ws = FakeSocket([])
    with open(source, "rb") as f:
        session = wsexec.Session(ws, "p")  # type: ignore[arg-type]
        session._pump_stdin(f.fileno())
    assert ws.sent == [b"\x00data", b"\xff\x00"]


def test_exec_url_carries_every_word() -> None:
    url = wsexec.exec_url(server.ApiServer(url="https://10.0.0.1:6443"), "ns", "p", "c", ["sh", "-c", "a 'b c'"], True)
    assert url.startswith("wss://10.0.0.1:6443/api/v1/namespaces/ns/pods/p/exec?command=sh&command=-c&command=a+")
    assert "container=c" in url and "stdin=true" in url


def test_session_on_v4_cannot_close_stdin(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"data")
    ws = FakeSocket([], protocol="v4.channel.k8s.io")
    with open(source, "rb") as f:
        wsexec.Session(ws, "p")._pump_stdin(f.fileno())  # type: ignore[arg-type]
    assert ws.sent == [b"\x00data"]


def test_a_denial_is_final_sooner_for_credentials_never_accepted() -> None:
    fresh, known = DenialGrace(2.0, 15.0), DenialGrace(2.0, 15.0)
    known.allowed()
    assert not fresh.final(100.0) and not fresh.final(101.9) and fresh.final(102.0)
    assert not known.final(100.0) and not known.final(114.9) and known.final(115.0)
    known.allowed()  # an answer in between starts the grace again
    assert not known.final(200.0) and known.remaining(205.0) == 10.0
